"""Tune a model's kernels ahead of time: `python -m tritium.autotune (--model DIR | --preset NAME) [engine
options]` writes the tuned choices to tritium/autotune/tables/<gpu>.json, where later runs on that kind of GPU
find them (tables.py).

It starts an engine (start-up tunes the decode graphs' batch buckets), runs one prefill step per token bucket
up to max_num_batched_tokens (steps past max_model_len spread over several prompts), then one decode step per
batch bucket with temperature and with top-p sampling (and one with top-k), and saves every named kernel's
choices, also when a step fails.
Keys are shapes (hidden size, heads, block size, token and batch buckets): a table serves the model shapes
and engine settings it was made with, so run it once per model; entries of other models are kept. Tables
are ignored while it runs, so every key it meets is tuned afresh.
"""
import argparse
import os
import random
import sys
import time


def bucket_sizes(limit: int) -> list[int]:
    """One size per power-of-two bucket up to limit's own: 1, 2, 4, ... below limit, then limit itself."""
    return [1 << i for i in range(limit.bit_length()) if 1 << i < limit] + [limit]


def prefill_steps(max_batched_tokens: int, max_model_len: int) -> list[list[int]]:
    """Prompt lengths of one prefill step per token bucket (their sums: bucket_sizes), no prompt longer than
    max_model_len - 1 (one token is generated)."""
    longest = max_model_len - 1
    steps = []
    for total in bucket_sizes(max_batched_tokens):
        lens = [longest] * (total // longest)
        if total % longest:
            lens.append(total % longest)
        steps.append(lens)
    return steps


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

    from tritium import LLM, SamplingParams
    from tritium.autotune import tables
    from tritium.platform import gpu_name

    if args.model:
        model = args.model
    else:
        from tritium.model.synthetic import ensure_checkpoint

        model = str(ensure_checkpoint(args.preset))
    start = time.perf_counter()
    llm = LLM(model, max_model_len=args.max_model_len, kvcache_block_size=args.kvcache_block_size,
              max_num_batched_tokens=args.max_num_batched_tokens, max_num_seqs=args.max_num_seqs)
    print(f"engine started (decode buckets tuned) in {time.perf_counter() - start:.0f} s", flush=True)
    rng = random.Random(0)
    vocab = min(llm.hf_config.vocab_size, 10000)

    def prompts(lens):  # random ids: no prefix-cache hits between prompts
        return [[rng.randrange(vocab) for _ in range(n)] for n in lens]

    try:
        for lens in prefill_steps(args.max_num_batched_tokens, llm.config.max_model_len):
            llm.generate(prompts(lens), SamplingParams(temperature=0.6, max_tokens=1), use_tqdm=False)
        print(f"prefill buckets tuned at {time.perf_counter() - start:.0f} s", flush=True)
        batches = bucket_sizes(min(args.max_num_seqs, args.max_num_batched_tokens))  # the most decode rows
        for batch in batches:
            for params in (SamplingParams(temperature=0.6, max_tokens=2),
                           SamplingParams(temperature=0.6, top_p=0.9, max_tokens=2)):
                llm.generate(prompts([8] * batch), params, use_tqdm=False)
        # top-k passes the filter an int32 k where top-p alone passes a placeholder: another key
        llm.generate(prompts([8] * batches[-1]), SamplingParams(temperature=0.6, top_k=50, max_tokens=2),
                     use_tqdm=False)
        print(f"decode sampling buckets tuned at {time.perf_counter() - start:.0f} s", flush=True)
    finally:  # what was tuned before a failure is kept
        try:
            path = tables.save(gpu_name())
            counts = {name: len(k.tuner.cache) for name, k in sorted(tables.KERNELS.items())}
            print(f"wrote {path}: {counts}", flush=True)
        finally:
            llm.exit()


if __name__ == "__main__":
    main()
