"""Few-row linear (decode GEMV) at the Qwen3 projections, bf16, against cuBLAS (torch.mm into the same
static output). Bytes: W read once plus x and y. Each call reads a different copy of W (over 128 MB of
copies, past the L2), as a model's layers each read their own weight once per decode step; timed inside
CUDA graphs of many calls, as the decode graph runs them."""
from __future__ import annotations

import itertools

import torch

from benchmarks.kernels.harness import Row, time_us
from tritium.kernels.skinny_linear import skinny_linear

PROJECTIONS = {
    "0.6b qkv": (4096, 1024), "0.6b o": (1024, 2048), "0.6b gate_up": (6144, 1024), "0.6b down": (1024, 3072),
    "8b qkv": (6144, 4096), "8b o": (4096, 4096), "8b gate_up": (24576, 4096), "8b down": (4096, 12288),
}
ROWS = [1, 2, 4, 8, 16]
ROTATE_BYTES = 128 << 20


def run(ceilings) -> list:
    rows = []
    for name, (n, k) in PROJECTIONS.items():
        copies = max(2, -(-ROTATE_BYTES // (2 * n * k)))
        ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * k ** -0.5 for _ in range(copies)]
        for m in ROWS:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
            ours, theirs = itertools.cycle(ws), itertools.cycle(ws)
            us = time_us(lambda: skinny_linear(x, next(ours), out=out), graph=True)
            cublas = time_us(lambda: torch.mm(x, next(theirs).t(), out=out), graph=True)
            rows.append(Row("skinny_linear", f"{name} M={m} N={n} K={k}", us,
                            bytes=2 * (n * k + m * (n + k)), flops=2 * m * n * k, peers={"cublas": cublas}))
        del ws
    return rows
