"""Command line: `python -m tritium generate --model DIR --prompt TEXT [--prompt TEXT ...] [--chat]`."""
import argparse
import sys

from tritium import LLM, SamplingParams


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
    gen.add_argument("--max-model-len", type=int, default=4096)
    gen.add_argument("--enforce-eager", action="store_true")
    args = ap.parse_args(argv)
    try:
        params = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                                max_tokens=args.max_tokens, seed=args.seed)
        with LLM(args.model, max_model_len=args.max_model_len, enforce_eager=args.enforce_eager) as llm:
            if args.chat:
                outs = llm.chat([[{"role": "user", "content": p}] for p in args.prompt], params, use_tqdm=False)
            else:
                outs = llm.generate(args.prompt, params, use_tqdm=False)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for prompt, out in zip(args.prompt, outs):
        print(f"--- {prompt!r}\n{out['text']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
