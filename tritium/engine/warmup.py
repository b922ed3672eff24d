"""Start-up warm-up: every kernel shape a configuration allows runs once, so a later `generate` compiles and
tunes nothing.

Kernels are keyed on power-of-two buckets (tokens of a step, sampling rows, the longest prefill chunk) and
compiled per bucket-independent specialization (autotune.SPECIALIZATION), so a few steps per bucket reach
them all: two prefill steps per token bucket up to max_num_batched_tokens (prompts no longer than
max_model_len - 1) and a decode step per batch bucket up to max_running with plain and with filtered
(top-k/top-p/min-p) sampling (the decode graphs' own buckets were tuned when they were captured).
The two prefill steps of a bucket differ in parity (its size and one less): the row kernels' mask-free
variants (EVEN heuristics: tokens x width % the tuned tile == 0) hold for a power of two and fail for an
odd count, so a step of any size in the bucket meets a variant already built.
The warm-up requests carry their own seed, so the engine's seed generator is untouched; the engine starts
a fresh scheduler afterwards (empty prefix cache, zeroed counters).
"""
from __future__ import annotations

import random

from tritium.autotune import next_pow2
from tritium.engine.sampling_params import SamplingParams


def bucket_sizes(limit: int) -> list[int]:
    """One size per power-of-two bucket up to limit's own: 1, 2, 4, ... below limit, then limit itself."""
    return [1 << i for i in range(limit.bit_length()) if 1 << i < limit] + [limit]


def prefill_totals(max_batched_tokens: int) -> list[int]:
    """Token counts of the prefill steps: each bucket size, and one less where that stays in the bucket."""
    totals = []
    for size in bucket_sizes(max_batched_tokens):
        totals.append(size)
        if size > 1 and next_pow2(size - 1) == next_pow2(size):
            totals.append(size - 1)
    return totals


def prefill_steps(max_batched_tokens: int, max_model_len: int) -> list[list[int]]:
    """Prompt lengths of the prefill steps (their sums: prefill_totals), no prompt longer than
    max_model_len - 1 (one token is generated)."""
    longest = max_model_len - 1
    steps = []
    for total in prefill_totals(max_batched_tokens):
        lens = [longest] * (total // longest)
        if total % longest:
            lens.append(total % longest)
        steps.append(lens)
    return steps


def warm_up(llm, log=None) -> None:
    """Run the sweeps above through `llm.generate` (random ids: no prefix-cache hits between prompts)."""
    cfg = llm.config
    rng = random.Random(0)
    vocab = min(llm.hf_config.vocab_size, 10000)
    prompt_len = max(1, min(8, cfg.max_model_len - 2))

    def run(lens, **params):
        prompts = [[rng.randrange(vocab) for _ in range(n)] for n in lens]
        llm.generate(prompts, SamplingParams(temperature=0.6, seed=0, **params), use_tqdm=False)

    for lens in prefill_steps(cfg.max_num_batched_tokens, cfg.max_model_len):
        run(lens, max_tokens=1)
    if log:
        log("prefill buckets done")
    max_running = min(cfg.max_num_seqs, cfg.max_num_batched_tokens)
    batches = bucket_sizes(max_running)
    for batch in batches:
        for params in (dict(), dict(top_p=0.9)):  # any filter runs all three (ModelRunner._sample)
            run([prompt_len] * batch, max_tokens=2, **params)
    if log:
        log("decode sampling buckets done")
