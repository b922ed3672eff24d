"""Command line.

    python -m tritium generate --model DIR --prompt TEXT [--prompt TEXT ...] [--chat] [engine options]
    python -m tritium serve --model DIR [--host 127.0.0.1] [--port 8000] [engine options]

Engine options are EngineConfig's fields as flags (--max-model-len 4096, --enforce-eager, ...).
"""
import argparse
import dataclasses
import sys

from tritium import LLM, SamplingParams
from tritium.engine.config import EngineConfig

GENERATE_OWN = ("seed",)  # `generate --seed` is the sampling seed, not the engine's


def _engine_fields(skip=()):
    return [f for f in dataclasses.fields(EngineConfig) if f.name != "model" and f.name not in skip]


def _add_engine_options(parser: argparse.ArgumentParser, skip=()) -> None:
    group = parser.add_argument_group("engine options (see EngineConfig)")
    for f in _engine_fields(skip):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            kind = str if f.default is None else type(f.default)
            group.add_argument(flag, type=kind, default=None, metavar=f.name.upper())


def _engine_options(args, skip=()) -> dict:
    """The engine options given on the command line (the rest keep EngineConfig's defaults)."""
    return {f.name: getattr(args, f.name) for f in _engine_fields(skip) if getattr(args, f.name) is not None}


def _generate(args) -> int:
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                            max_tokens=args.max_tokens, seed=args.seed)
    with LLM(args.model, **_engine_options(args, GENERATE_OWN)) as llm:
        if args.chat:
            outs = llm.chat([[{"role": "user", "content": p}] for p in args.prompt], params, use_tqdm=False)
        else:
            outs = llm.generate(args.prompt, params, use_tqdm=False)
    for prompt, out in zip(args.prompt, outs):
        print(f"--- {prompt!r}\n{out['text']}")
    return 0


def _serve(args) -> int:
    try:
        from tritium.serve.app import serve
    except ImportError as e:
        print(f"error: the server needs the serve extra (pip install 'tritium[serve]'): {e}", file=sys.stderr)
        return 2
    serve(args.model, _engine_options(args), args.served_model_name or args.model, host=args.host, port=args.port)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tritium")
    sub = ap.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate completions for one or more prompts")
    gen.add_argument("--model", required=True, help="HF-format checkpoint directory")
    gen.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    gen.add_argument("--chat", action="store_true", help="wrap each prompt in the checkpoint's chat template")
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--seed", type=int, default=None)
    srv = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions)")
    srv.add_argument("--model", required=True, help="HF-format checkpoint directory")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--served-model-name", default=None, help="the name clients pass as 'model' (default: --model)")
    _add_engine_options(gen, GENERATE_OWN)
    _add_engine_options(srv)
    args = ap.parse_args(argv)
    try:
        return _generate(args) if args.command == "generate" else _serve(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
