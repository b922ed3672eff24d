"""KV-cache store at Qwen3 shapes (8 kv heads, head_dim 128), bf16, block size 256: k and v are slices of a
packed qkv tensor, slots run contiguously within randomly ordered blocks (as a prefill writes them).
Peers: the reference's writes without holes (`cache[slot // B, slot % B] = k`, no host sync), eager and
compiled. Bytes: k and v read once and written once, slot_mapping (int32) read once."""
from __future__ import annotations

import torch

from benchmarks.kernels import rowbench as rb
from tritium.kernels.kv_store import store_kv

E = 2
BLOCK = 256
CACHE_TOKENS = 1 << 17  # 131,072 slots: 256 MiB per cache for 8 x 128 bf16


def _ref_no_holes(k, v, k_cache, v_cache, slots):
    s = slots.long()
    k_cache[s // BLOCK, s % BLOCK] = k
    v_cache[s // BLOCK, s % BLOCK] = v


def run(ceilings) -> list:
    rows = []
    for model, m in rb.MODELS.items():
        hq, hkv, d = m["heads"], m["kv_heads"], m["head_dim"]
        n_blocks = CACHE_TOKENS // BLOCK
        k_cache = torch.empty(n_blocks, BLOCK, hkv, d, device=rb.DEVICE, dtype=rb.DTYPE)
        v_cache = torch.empty_like(k_cache)
        for t in rb.TOKENS:
            def make(t=t, hq=hq, hkv=hkv, d=d):
                qkv = rb.randn(t, (hq + 2 * hkv) * d)
                k = qkv[:, hq * d : (hq + hkv) * d].view(t, hkv, d)
                v = qkv[:, (hq + hkv) * d :].view(t, hkv, d)
                blocks = torch.randperm(n_blocks, device=rb.DEVICE)[: (t + BLOCK - 1) // BLOCK]
                pos = torch.arange(t, device=rb.DEVICE)
                slots = (blocks[pos // BLOCK] * BLOCK + pos % BLOCK).to(torch.int32)
                return k, v, k_cache, v_cache, slots

            rows.append(rb.measure(
                "store_kv", f"{model} T={t} {hkv}x{d} B={BLOCK}", t, make,
                store_kv, _ref_no_holes,
                n_bytes=4 * t * hkv * d * E + 4 * t,
            ))
    return rows
