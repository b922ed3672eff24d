"""Few-row linear (decode GEMV) at the Qwen3 projections, bf16, against cuBLAS (torch.mm into the same
static output). Bytes: W read once plus x and y. Each call reads a different copy of W (the tuner's
ROTATE_BYTES of copies, past the L2), as a model's layers each read their own weight once per decode step;
timed inside CUDA graphs of many calls, as the decode graph runs them. The down projections are timed
gated too (SiLU-and-mul of [gate | up] fused in) against silu_and_mul then cuBLAS."""
from __future__ import annotations

import torch

from benchmarks.kernels import rowbench as rb
from benchmarks.kernels.harness import Row, time_us
from tritium.autotune import ROTATE_BYTES, rotation_sets
from tritium.kernels.activation import silu_and_mul
from tritium.kernels.skinny_linear import skinny_linear

PROJECTIONS = {
    "0.6b qkv": (4096, 1024), "0.6b o": (1024, 2048), "0.6b gate_up": (6144, 1024), "0.6b down": (1024, 3072),
    "8b qkv": (6144, 4096), "8b o": (4096, 4096), "8b gate_up": (24576, 4096), "8b down": (4096, 12288),
}
ROWS = [1, 2, 4, 8, 16]
MAX_COPIES = 64  # the smallest weight (4 MB) needs 32 to pass ROTATE_BYTES


def run(ceilings) -> list:
    rows = []
    for name, (n, k) in PROJECTIONS.items():
        ws = [(rb.randn(n, k) * k ** -0.5,) for _ in range(rotation_sets(2 * n * k, ROTATE_BYTES, MAX_COPIES))]
        for m in ROWS:
            x = rb.randn(m, k)
            out = rb.randn(m, n)  # a static output, overwritten by both
            us = time_us(rb.cycling(lambda w: skinny_linear(x, w, out=out), ws), graph=True)
            cublas = time_us(rb.cycling(lambda w: torch.mm(x, w.t(), out=out), ws), graph=True)
            rows.append(Row("skinny_linear", f"{name} M={m} N={n} K={k}", us,
                            bytes=2 * (n * k + m * (n + k)), flops=2 * m * n * k, peers={"cublas": cublas}))
            if name.endswith("down"):
                gate_up = rb.randn(m, 2 * k)
                us = time_us(rb.cycling(lambda w: skinny_linear(gate_up, w, gated=True, out=out), ws), graph=True)
                unfused = time_us(rb.cycling(lambda w: torch.mm(silu_and_mul(gate_up), w.t(), out=out), ws),
                                  graph=True)
                rows.append(Row("skinny_linear", f"{name} gated M={m} N={n} K={k}", us,
                                bytes=2 * (n * k + m * (n + 2 * k)), flops=2 * m * n * k,
                                peers={"silu_and_mul+cublas": unfused}))
        del ws
    return rows
