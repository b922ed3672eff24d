"""RMSNorm kernels at Qwen3 shapes, bf16: rms_norm and add_rms_norm (in place on the residual, as the model
runs it) over [T, hidden], head_rms_norm (q_norm) in place on the q slice of a packed qkv tensor.
Bytes: each input read once, each output written once (weight included). Peer ratios against the launchers
with their outputs allocated per call, as the references return theirs (rowbench.measure says why)."""
from __future__ import annotations

from benchmarks.kernels import rowbench as rb
from tritium.kernels.rmsnorm import (
    add_rms_norm,
    add_rms_norm_ref,
    head_rms_norm,
    head_rms_norm_ref,
    rms_norm,
    rms_norm_ref,
)

EPS = 1e-6
E = 2  # bytes per bf16 element


def run(ceilings) -> list:
    rows = []
    for model, m in rb.MODELS.items():
        h, hq, hkv, d = m["hidden"], m["heads"], m["kv_heads"], m["head_dim"]
        w, wd = rb.randn(h), rb.randn(d)
        for t in rb.TOKENS:
            shape = f"{model} T={t} H={h}"
            rows.append(rb.measure(
                "rms_norm", shape, t,
                lambda: (rb.randn(t, h), rb.randn(t, h)),
                lambda x, out: rms_norm(x, w, EPS, out=out),
                lambda x, out: rms_norm_ref(x, w, EPS),
                n_bytes=2 * t * h * E + h * E,
                ours_alloc=lambda x, out: rms_norm(x, w, EPS),
            ))
            rows.append(rb.measure(
                "add_rms_norm", shape, t,
                lambda: (rb.randn(t, h), rb.randn(t, h), rb.randn(t, h)),
                lambda x, r, out: add_rms_norm(x, r, w, EPS, out=out, residual_out=r),
                lambda x, r, out: add_rms_norm_ref(x, r, w, EPS),
                n_bytes=4 * t * h * E + h * E,
                ours_alloc=lambda x, r, out: add_rms_norm(x, r, w, EPS),
            ))

            def make_q(t=t, hq=hq, hkv=hkv, d=d):
                return (rb.randn(t, (hq + 2 * hkv) * d)[:, : hq * d].view(t, hq, d),)

            rows.append(rb.measure(
                "head_rms_norm(q)", f"{model} T={t} {hq}x{d}", t, make_q,
                lambda q: head_rms_norm(q, wd, EPS, out=q),
                lambda q: head_rms_norm_ref(q, wd, EPS),
                n_bytes=2 * t * hq * d * E + d * E,
                ours_alloc=lambda q: head_rms_norm(q, wd, EPS),
            ))
    return rows
