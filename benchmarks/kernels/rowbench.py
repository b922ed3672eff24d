"""Shared pieces of the row-kernel benchmarks (bench_rmsnorm, bench_rope, bench_activation, bench_kv_store).

- MODELS / TOKENS: Qwen3-0.6B and Qwen3-8B shapes over the token counts of the kernels issue.
- `measure()` times tritium's launcher and its peers (torch eager of the reference, torch.compile of the
  reference) on the same inputs and returns a harness Row. Inputs are rotated over several copies whose
  total passes the L2 cache, so large sizes are not served from L2; token counts up to GRAPH_MAX_TOKENS
  are timed inside a CUDA graph of many calls (launch-bound sizes).
Knobs (environment): TRITIUM_BENCH_TOKENS="1,16,256" limits token counts; TRITIUM_BENCH_NO_COMPILE=1 skips
the torch.compile peer (it compiles once per shape, which dominates the run time).
"""
from __future__ import annotations

import itertools
import math
import os

import torch

from benchmarks.kernels.harness import Row, compiled_or_none, time_us

MODELS = {
    "0.6B": dict(hidden=1024, heads=16, kv_heads=8, head_dim=128, inter=3072),
    "8B": dict(hidden=4096, heads=32, kv_heads=8, head_dim=128, inter=12288),
}
TOKENS = [int(t) for t in os.environ.get("TRITIUM_BENCH_TOKENS", "1,16,256,4096,16384").split(",")]
GRAPH_MAX_TOKENS = 256
ROTATE_BYTES = 192 << 20  # several times the 50-60 MB L2 of an H100/H200
MAX_SETS = 16
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
    n = max(1, min(MAX_SETS, math.ceil(ROTATE_BYTES / max(n_bytes, 1))))
    return [make() for _ in range(n)]


def cycling(fn, sets):
    """fn(*set) over the sets in turn (each captured graph call gets its own set)."""
    it = itertools.cycle(sets)
    return lambda: fn(*next(it))


def _time_or_none(fn, graph: bool, label: str):
    try:
        return time_us(fn, graph=graph)
    except Exception as e:  # noqa: BLE001 (a failing peer must not stop the table)
        print(f"  [{label}] failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return None


def measure(kernel: str, shape: str, tokens: int, make, ours, ref, n_bytes: float, flops: float = 0.0) -> Row:
    """Row for `ours(*inputs)` vs `ref(*inputs)` (eager and compiled) on rotated copies from make()."""
    sets = input_sets(make, n_bytes)
    graph = tokens <= GRAPH_MAX_TOKENS
    us = time_us(cycling(ours, sets), graph=graph)
    peers = {"eager": _time_or_none(cycling(ref, sets), graph, f"{kernel} {shape} eager")}
    if os.environ.get("TRITIUM_BENCH_NO_COMPILE", "0") in ("", "0"):
        compiled = compiled_or_none(ref)
        peers["compile"] = _time_or_none(cycling(compiled, sets), graph, f"{kernel} {shape} compile") if compiled else None
    del sets
    torch.cuda.empty_cache()
    return Row(kernel=kernel, shape=shape, us=us, bytes=n_bytes, flops=flops, peers=peers)
