"""Paged attention for one layer, and the per-step metadata every layer reads.

The metadata is built by the model runner for each step and passed down the forward explicitly. The step's
new K/V go into the layer's paged cache (`kv_cache`, at slot_mapping) first, then it attends (`attend`): decode
rows (one new token each, first in the step) through the split-KV decode kernel, prefill chunks through the
varlen prefill kernel (cached prefix + earlier chunks + causal new tokens); a mixed step runs both into one
output.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tritium.kernels.decode_attention import decode_attention
from tritium.kernels.prefill_attention import prefill_attention


@dataclass
class AttentionMetadata:
    """One step's view of the batch. T = tokens computed this step, B = sequences. The first `num_decodes`
    sequences have one new token each (rows 0 .. num_decodes-1) and go through the decode kernel; the rest
    are prefill chunks (varlen, rows num_decodes .. T-1) through the prefill kernel."""

    slot_mapping: torch.Tensor  # [T] int32/int64: cache slot of each new token (-1 = padding, skipped)
    seq_lens: torch.Tensor  # [B] int32: context length of each sequence after this step
    block_tables: torch.Tensor  # [B, max_blocks] int32: physical block ids of each sequence
    num_decodes: int = 0
    cu_seqlens_q: torch.Tensor | None = None  # [B - num_decodes + 1] int32: prefill token offsets (None: none)
    max_seqlen_q: int = 1  # longest prefill chunk (sizes the prefill grid)


class Attention(nn.Module):
    """softmax(q k^T * scale) v over the paged cache; q [T, Hq, D], k/v [T, Hkv, D] (strided views allowed)."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim, self.scale = num_heads, num_kv_heads, head_dim, scale
        # Set by the model runner once the cache is allocated: [num_blocks, block_size, Hkv, D] each.
        self.k_cache = self.v_cache = torch.empty(0)

    def kv_cache(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(k_cache, v_cache) [num_blocks, block_size, Hkv, D] that the step's new K/V are stored into (by the
        RoPE launch, see decoder.py) before `attend`."""
        if self.k_cache.numel() == 0:
            raise RuntimeError("attention has no KV cache; the model runner allocates it before any forward")
        return self.k_cache, self.v_cache

    def attend(self, q: torch.Tensor, meta: AttentionMetadata, out: torch.Tensor | None = None) -> torch.Tensor:
        """o [T, Hq, D] for q [T, Hq, D] over the cache (the step's K/V stored already), into `out` if given."""
        kc, vc, d = self.k_cache, self.v_cache, meta.num_decodes
        if meta.cu_seqlens_q is None:
            return decode_attention(q, kc, vc, meta.seq_lens, meta.block_tables, self.scale, out=out)
        if d == 0:
            return prefill_attention(q, kc, vc, meta.cu_seqlens_q, meta.seq_lens, meta.block_tables,
                                     meta.max_seqlen_q, self.scale, out=out)
        if out is None:
            out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        decode_attention(q[:d], kc, vc, meta.seq_lens[:d], meta.block_tables[:d], self.scale, out=out[:d])
        prefill_attention(q[d:], kc, vc, meta.cu_seqlens_q, meta.seq_lens[d:], meta.block_tables[d:],
                          meta.max_seqlen_q, self.scale, out=out[d:])
        return out


def kv_cache_bytes_per_block(model: nn.Module, block_size: int, dtype: torch.dtype) -> int:
    """Bytes one block of `block_size` tokens takes across all layers (K and V)."""
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    elem = torch.empty(0, dtype=dtype).element_size()
    return sum(2 * block_size * m.num_kv_heads * m.head_dim * elem for m in layers)


def allocate_kv_cache(model: nn.Module, num_blocks: int, block_size: int, dtype: torch.dtype,
                      device: torch.device | str) -> torch.Tensor:
    """One tensor [2, layers, num_blocks, block_size, Hkv, D] for the whole cache; each attention layer gets
    views of its K and V parts. Returns the tensor (drop every reference to it to free the cache)."""
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    hkv, d = layers[0].num_kv_heads, layers[0].head_dim
    cache = torch.empty(2, len(layers), num_blocks, block_size, hkv, d, dtype=dtype, device=device)
    for i, layer in enumerate(layers):
        layer.k_cache, layer.v_cache = cache[0, i], cache[1, i]
    return cache


def release_kv_cache(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, Attention):
            m.k_cache = m.v_cache = torch.empty(0)
