"""End-to-end throughput on the reference workload (Nano-vLLM's bench.py).

GPU: synthetic Qwen3-0.6B, 256 requests, seed 0, prompts of randint(100, 1024) random ids in [0, 10000],
max_tokens randint(100, 1024), temperature 0.6, ignore_eos, max_model_len 4096 (133,966 output tokens).
CPU: the `tiny` preset and a reduced workload through the interpreter (a smoke run, not a measurement).
`--peer transformers` then runs transformers' continuous batching on the same requests and prints the ratio.
Prints output tokens, seconds and tok/s, and writes JSON under benchmarks/results/<gpu>/, with the engine's
start-up time (which compiles and tunes every kernel shape), the tuning tables the kernels started from, and
how many kernel keys were tuned and kernel variants compiled inside the timed run (both should be 0).
"""
import argparse
import collections
import json
import sys
import time
from pathlib import Path
from random import randint, seed

ROOT = Path(__file__).resolve().parents[1]
# The repo root, not this script's folder: benchmarks/kernels would shadow the `kernels` package that
# transformers probes for when it builds a model (the peer run).
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from tritium import LLM, SamplingParams  # noqa: E402
from tritium.autotune import compiles, tables  # noqa: E402
from tritium.engine.config import PIECEWISE_GRAPH_TOKENS  # noqa: E402
from tritium.model.synthetic import ensure_checkpoint  # noqa: E402
from tritium.platform import HAS_CUDA, gpu_name  # noqa: E402


def workload(num_seqs: int, max_input: int, max_output: int, min_len: int, max_id: int = 10000):
    seed(0)
    prompts = [[randint(0, max_id) for _ in range(randint(min_len, max_input))] for _ in range(num_seqs)]
    params = [SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=randint(min_len, max_output))
              for _ in range(num_seqs)]
    return prompts, params


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="checkpoint directory (default: a synthetic preset)")
    ap.add_argument("--preset", default="qwen3-0.6b" if HAS_CUDA else "tiny")
    ap.add_argument("--num-seqs", type=int, default=256 if HAS_CUDA else 4)
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--piecewise-graph-tokens", type=int, default=PIECEWISE_GRAPH_TOKENS,
                    help="prefill / mixed steps up to this many tokens replay piecewise CUDA graphs (0: eager)")
    ap.add_argument("--tensor-parallel-size", type=int, default=1)
    ap.add_argument("--peer", choices=["transformers"], help="also run a peer engine on the same requests")
    args = ap.parse_args()
    model = args.model or str(ensure_checkpoint(args.preset))
    if HAS_CUDA:
        prompts, params = workload(args.num_seqs, 1024, 1024, 100)
    else:
        prompts, params = workload(args.num_seqs, 48, 16, 8, max_id=1000)  # the tiny vocabulary is 1024
    start = time.perf_counter()
    llm = LLM(model, max_model_len=4096, enforce_eager=args.enforce_eager,
              kvcache_block_size=256 if HAS_CUDA else 16, tensor_parallel_size=args.tensor_parallel_size,
              piecewise_graph_tokens=args.piecewise_graph_tokens)
    startup = time.perf_counter() - start
    held, built = tables.held_keys(), compiles.count()  # start-up ran every kernel shape (GPU)
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    tuned_in_run, built_in_run = tables.held_keys() - held, compiles.count() - built
    table = ", ".join(map(str, tables.active_tables(gpu_name()))) or None
    out_tokens = sum(len(o["token_ids"]) for o in outs)
    assert out_tokens == sum(p.max_tokens for p in params), "every request must run to max_tokens"
    prompt_tokens = sum(map(len, prompts))
    print(f"model {args.model or args.preset} on {gpu_name()}: {len(prompts)} requests, prompt tokens "
          f"{prompt_tokens}, output tokens {out_tokens}, {elapsed:.2f} s, {out_tokens / elapsed:.0f} tok/s")
    print(f"engine start-up {startup:.1f} s; tuning tables: {table or 'none'}; inside the timed run: "
          f"{tuned_in_run} kernel keys tuned, {built_in_run} kernel variants compiled")
    at_startup = collections.Counter(v.split("(")[0] for v in compiles.built_since(0)[:built])
    print(f"start-up built {built} kernel variants:", ", ".join(f"{k} {n}" for k, n in at_startup.most_common()))
    for variant in compiles.built_since(built):
        print("  compiled in the run:", variant)
    llm.exit()  # its memory goes back before a peer loads the model
    result = {"date": time.strftime("%Y-%m-%d"), "model": args.model or args.preset, "requests": len(prompts),
              "prompt_tokens": prompt_tokens, "output_tokens": out_tokens, "seconds": elapsed,
              "output_tok_per_s": out_tokens / elapsed, "enforce_eager": args.enforce_eager,
              "piecewise_graph_tokens": args.piecewise_graph_tokens,
              "tensor_parallel_size": args.tensor_parallel_size,
              "preemptions": llm.scheduler.num_preemptions,
              "startup_s": startup, "tuning_tables": table, "keys_tuned_in_run": tuned_in_run,
              "kernels_compiled_in_run": built_in_run, "compiled_in_run": compiles.built_since(built)}
    if args.peer:
        from benchmarks.peer import transformers_continuous_batching

        peer_tokens, peer_s = transformers_continuous_batching(model, prompts, params, "cuda" if HAS_CUDA else "cpu")
        assert peer_tokens == out_tokens, (peer_tokens, out_tokens)
        ratio = (out_tokens / elapsed) / (peer_tokens / peer_s)
        print(f"peer transformers (continuous batching, paged|sdpa): {peer_tokens / peer_s:.0f} tok/s "
              f"({peer_s:.2f} s); tritium / peer = {ratio:.1f}x")
        result.update(peer="transformers", peer_seconds=peer_s, peer_tok_per_s=peer_tokens / peer_s,
                      over_peer=ratio)
    if HAS_CUDA:
        import torch

        result["gpu"] = torch.cuda.get_device_name()
        tp = f"_tp{args.tensor_parallel_size}" if args.tensor_parallel_size > 1 else ""
        pw = f"_pw{args.piecewise_graph_tokens}" if args.piecewise_graph_tokens != PIECEWISE_GRAPH_TOKENS else ""
        model = "" if args.model or args.preset == "qwen3-0.6b" else f"_{args.preset}"  # reference: bench.json
        name = f"bench{model}{tp}" + ("_eager" if args.enforce_eager else "") + pw + ".json"
        path = ROOT / "benchmarks" / "results" / gpu_name() / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
