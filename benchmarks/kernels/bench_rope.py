"""RoPE at Qwen3 shapes, bf16, theta 1e6: apply_rope and the fused qk_norm_rope, in place on the q and k
slices of a packed qkv tensor at random positions < 40960.
Bytes: q and k read and written once, positions (int64) and one fp32 cos|sin row per token read once,
norm weights once."""
from __future__ import annotations

import torch

from benchmarks.kernels import rowbench as rb
from tritium.kernels.rope import apply_rope, apply_rope_ref, qk_norm_rope, qk_norm_rope_ref, rope_cos_sin

EPS = 1e-6
E = 2
MAX_POS = 40960


def run(ceilings) -> list:
    rows = []
    for model, m in rb.MODELS.items():
        hq, hkv, d = m["heads"], m["kv_heads"], m["head_dim"]
        cs = rope_cos_sin(d, MAX_POS, 1e6, device=rb.DEVICE)
        qw, kw = rb.randn(d), rb.randn(d)
        for t in rb.TOKENS:
            def make(t=t, hq=hq, hkv=hkv, d=d):
                qkv = rb.randn(t, (hq + 2 * hkv) * d)
                q = qkv[:, : hq * d].view(t, hq, d)
                k = qkv[:, hq * d : (hq + hkv) * d].view(t, hkv, d)
                return q, k, torch.randint(0, MAX_POS, (t,), device=rb.DEVICE)

            shape = f"{model} T={t} {hq}+{hkv}x{d}"
            n_bytes = 2 * t * (hq + hkv) * d * E + t * 8 + t * d * 4
            rows.append(rb.measure(
                "apply_rope", shape, t, make,
                lambda q, k, pos: apply_rope(q, k, pos, cs),
                lambda q, k, pos: apply_rope_ref(q, k, pos, cs),
                n_bytes=n_bytes,
            ))
            rows.append(rb.measure(
                "qk_norm_rope", shape, t, make,
                lambda q, k, pos: qk_norm_rope(q, k, qw, kw, EPS, pos, cs),
                lambda q, k, pos: qk_norm_rope_ref(q, k, qw, kw, EPS, pos, cs),
                n_bytes=n_bytes + 2 * d * E,
            ))
    return rows
