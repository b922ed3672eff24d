"""Tune a model's kernels ahead of time: `python -m tritium.autotune (--model DIR | --preset NAME) [engine
options]` writes the tuned choices to tritium/autotune/tables/<gpu>.json, where later runs on that kind of GPU
find them (tables.py).

It starts an engine, whose start-up meets every kernel shape the settings allow (tritium.engine.warmup: the
decode graphs' batch buckets, one prefill step per token bucket, one decode step per batch bucket with plain,
top-p and top-k sampling), and saves every named kernel's choices, also when start-up fails part way.
Keys are shapes (hidden size, heads, block size, token and batch buckets): a table serves the model shapes
and engine settings it was made with, so run it once per model; entries of other models are kept. Tables
are ignored while it runs, so every key it meets is tuned afresh.
"""
import argparse
import os
import sys
import time


def require_gpu() -> None:
    from tritium.platform import INTERPRET

    if INTERPRET:
        sys.exit("python -m tritium.autotune needs a CUDA GPU: Triton's interpreter runs one config per kernel")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tritium.autotune", description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="HF-format checkpoint directory")
    src.add_argument("--preset", help="a synthetic checkpoint preset (tritium.model.synthetic), e.g. qwen3-0.6b")
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--kvcache-block-size", type=int, default=256)
    ap.add_argument("--max-num-batched-tokens", type=int, default=16384)
    ap.add_argument("--max-num-seqs", type=int, default=512)
    args = ap.parse_args(argv)
    require_gpu()
    os.environ["TRITIUM_TUNE_TABLES"] = "0"  # before any kernel runs: tune every key afresh

    from tritium import LLM
    from tritium.autotune import tables
    from tritium.platform import gpu_name

    if args.model:
        model = args.model
    else:
        from tritium.model.synthetic import ensure_checkpoint

        model = str(ensure_checkpoint(args.preset))
    start = time.perf_counter()
    try:
        llm = LLM(model, max_model_len=args.max_model_len, kvcache_block_size=args.kvcache_block_size,
                  max_num_batched_tokens=args.max_num_batched_tokens, max_num_seqs=args.max_num_seqs)
        print(f"engine started (every bucket tuned) in {time.perf_counter() - start:.0f} s", flush=True)
        llm.exit()
    finally:  # what was tuned before a failure is kept
        path = tables.save(gpu_name())
        counts = {name: len(k.tuner.cache) for name, k in sorted(tables.KERNELS.items())}
        print(f"wrote {path}: {counts}", flush=True)


if __name__ == "__main__":
    main()
