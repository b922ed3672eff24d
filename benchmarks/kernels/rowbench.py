"""Shared pieces of the row-kernel benchmarks (bench_rmsnorm, bench_rope, bench_activation, bench_kv_store).

- MODELS / TOKENS: Qwen3-0.6B and Qwen3-8B shapes over the token counts of the kernels issue.
- `measure()` times tritium's launcher and its peers (torch eager of the reference, torch.compile of the
  reference) on the same inputs and returns a harness Row. Inputs are rotated over several copies whose
  total passes the L2 cache, so each call reads what the previous calls evicted (no flush needed), and
  every size is timed inside a CUDA graph of back-to-back calls. Timing T=4096 with plain do_bench
  measured the host instead: do_bench zeroes 256 MB (~60 us) before each call, and a launcher or eager
  chain whose Python time passes that leaves the GPU idle inside the timed window (0.6B T=4096 rms_norm
  read 62 us for a ~5 us kernel, and its peers were inflated the same way).
Knobs (environment): TRITIUM_BENCH_TOKENS="1,16,256" limits token counts; TRITIUM_BENCH_NO_COMPILE=1 skips
the torch.compile peer (it compiles once per shape, which dominates the run time).
"""
from __future__ import annotations

import itertools
import math
import os

import torch

from benchmarks.kernels.harness import GRAPH_CALLS, Row, compiled_or_none, time_us
from tritium.autotune import rotation_sets

MODELS = {
    "0.6B": dict(hidden=1024, heads=16, kv_heads=8, head_dim=128, inter=3072),
    "8B": dict(hidden=4096, heads=32, kv_heads=8, head_dim=128, inter=12288),
}
TOKENS = [int(t) for t in os.environ.get("TRITIUM_BENCH_TOKENS", "1,16,256,4096,16384").split(",")]
ROTATE_BYTES = 192 << 20  # several times the 50-60 MB L2 of an H100/H200
MAX_SETS = 16
ROUNDS = 2  # timings of each contender, taken in turn (measure keeps the best)
DTYPE = torch.bfloat16
DEVICE = "cuda"  # a CPU dry run of the benchmark code may set "cpu"

# One compile per shape and reference: lift dynamo's recompile limits above the number of shapes.
for _name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
    if hasattr(torch._dynamo.config, _name):
        setattr(torch._dynamo.config, _name, max(getattr(torch._dynamo.config, _name), 512))


def randn(*shape, dtype=None):
    return torch.randn(*shape, device=DEVICE).to(dtype or DTYPE)


def input_sets(make, n_bytes: float) -> list:
    """Enough copies of make()'s inputs that cycling through them moves >= ROTATE_BYTES."""
    return [make() for _ in range(rotation_sets(n_bytes, ROTATE_BYTES, MAX_SETS))]


def cycling(fn, sets):
    """fn(*set) over the sets in turn (each captured graph call gets its own set)."""
    it = itertools.cycle(sets)
    return lambda: fn(*next(it))


def _time(fn, calls: int, label: str) -> float:
    """Graph-timed us per call; do_bench (host time included) for work that cannot be captured."""
    try:
        return time_us(fn, graph=True, calls=calls)
    except Exception as e:  # noqa: BLE001 (e.g. a host sync inside fn)
        print(f"  [{label}] not capturable ({type(e).__name__}); timed with do_bench, host time included")
        return time_us(fn)


def _time_or_none(fn, calls: int, label: str):
    try:
        return _time(fn, calls, label)
    except Exception as e:  # noqa: BLE001 (a failing peer must not stop the table)
        print(f"  [{label}] failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return None


def measure(kernel: str, shape: str, tokens: int, make, ours, ref, n_bytes: float, flops: float = 0.0,
            ours_alloc=None) -> Row:
    """Row for `ours(*inputs)` vs `ref(*inputs)` (eager and compiled) on rotated copies from make().
    ours_alloc: ours in the reference's convention (outputs allocated per call), timed for the peer ratios.
    Each contender is timed ROUNDS times in turn and keeps its best: the first graph timing after a tuning
    pass or a compile ran up to 12% slow on an H200 (rms_norm 16 x 4096: 2.07 us, then 1.85 and 1.87)."""
    sets = input_sets(make, n_bytes)
    calls = math.ceil(GRAPH_CALLS / len(sets)) * len(sets)  # every set equally often
    fns = {"ours": ours, "alloc": ours_alloc, "eager": ref}
    if os.environ.get("TRITIUM_BENCH_NO_COMPILE", "0") in ("", "0"):
        fns["compile"] = compiled_or_none(ref)
    best = {}
    for _ in range(ROUNDS):
        for name, fn in fns.items():
            if fn is None:
                continue
            timer = _time if name == "ours" else _time_or_none  # a failing peer must not stop the table
            us = timer(cycling(fn, sets), calls, f"{kernel} {shape} {name}")
            if us is not None:
                best[name] = min(us, best.get(name, us))
    del sets
    torch.cuda.empty_cache()
    peers = {k: best.get(k) for k in ("eager", "compile") if k in fns}
    return Row(kernel=kernel, shape=shape, us=best["ours"], bytes=n_bytes, flops=flops, peers=peers,
               us_alloc=best.get("alloc"))
