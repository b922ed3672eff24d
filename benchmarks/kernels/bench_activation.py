"""SiLU-and-mul at Qwen3 shapes, bf16: [T, 2 * intermediate] -> [T, intermediate].
Bytes: the input read once, the output written once. Peer ratios against silu_and_mul with its output
allocated per call, as the reference returns it (rowbench.measure says why)."""
from __future__ import annotations

from benchmarks.kernels import rowbench as rb
from tritium.kernels.activation import silu_and_mul, silu_and_mul_ref

E = 2


def run(ceilings) -> list:
    rows = []
    for model, m in rb.MODELS.items():
        f = m["inter"]
        for t in rb.TOKENS:
            rows.append(rb.measure(
                "silu_and_mul", f"{model} T={t} F={f}", t,
                lambda t=t, f=f: (rb.randn(t, 2 * f), rb.randn(t, f)),
                lambda x, out: silu_and_mul(x, out=out),
                lambda x, out: silu_and_mul_ref(x),
                n_bytes=3 * t * f * E,
                flops=4 * t * f,  # sigmoid counted as one op
                ours_alloc=lambda x, out: silu_and_mul(x),
            ))
    return rows
