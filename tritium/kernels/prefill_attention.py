"""Paged causal prefill attention over packed variable-length queries (flash-attention tiling).

    q            [total_q, Hq, D]  fp16/bf16/fp32; rows may be strided (a slice of packed qkv), last dim
                                   contiguous. Sequence b's queries are rows cu_seqlens_q[b] .. cu_seqlens_q[b+1]-1.
    k/v_cache    [num_blocks, block_size, Hkv, D]  same dtype; already hold every token of every sequence,
                                   the new ones included (see attention_ref for the paging).
    cu_seqlens_q int32 [B+1]; seq_lens int32 [B]: full context length, new tokens included.
    block_tables int32 [B, max_blocks]
    out          [total_q, Hq, D]  q's dtype (new tensor, or `out=`; not in place)

Sequence b's q_len queries sit at absolute positions seq_lens[b] - q_len .. seq_lens[b] - 1; the query at
position p attends to keys 0..p: the cached prefix and earlier chunks fully, its own chunk causally.
    out[i, h] = softmax(scale * q[i, h] . K[0..p_i, h // G]^T) @ V[0..p_i, h // G],   G = Hq / Hkv

One program per (query head, BLOCK_M query tile, sequence). Online softmax in fp32 with exp2 (scale*log2 e
folded into one multiply). Key tiles of BLOCK_N positions are gathered row by row through the block table,
so the tile size is independent of the cache's block size. Tiles entirely before the query tile's first
position run without masks; the causal band after it is masked; tiles past the last query are skipped.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from tritium.autotune import next_pow2, tuned
from tritium.kernels.attention_ref import (
    check_block_tables,
    check_int_vector,
    check_out,
    check_q_cache,
    prefill_attention_ref,
)

__all__ = ["prefill_attention", "prefill_attention_ref", "CONFIGS"]

# BLOCK_M query rows x BLOCK_N keys per step; every dot has M, N, K >= 16.
CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=2),
]
KEY = ["GROUP", "HEAD_DIM", "KV_BLOCK_SIZE", "q_bucket"]
LOG2E = 1.4426950408889634


@triton.jit
def _attn_tile(acc, m_i, l_i, q, q_pos, start, seq_len, k_ptr, v_ptr, bt_row_ptr, kv_head_off,
               stride_kb, stride_kt, offs_d, qk_scale,
               KV_BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
               PRECISION: tl.constexpr):
    """One BLOCK_N key tile of the online softmax. MASKED: apply the causal / end-of-sequence mask."""
    offs_n = start + tl.arange(0, BLOCK_N)
    if MASKED:
        kv_ok = offs_n < seq_len
        blk = tl.load(bt_row_ptr + offs_n // KV_BLOCK_SIZE, mask=kv_ok, other=0)
    else:
        blk = tl.load(bt_row_ptr + offs_n // KV_BLOCK_SIZE)
    # physical row of each key: its block's base + slot; int64, the cache may exceed 2**31 elements
    row = blk.to(tl.int64) * stride_kb + (offs_n % KV_BLOCK_SIZE) * stride_kt + kv_head_off
    ptrs = row[:, None] + offs_d[None, :]
    if MASKED:
        k = tl.load(k_ptr + ptrs, mask=kv_ok[:, None], other=0.0)
        v = tl.load(v_ptr + ptrs, mask=kv_ok[:, None], other=0.0)
    else:
        k = tl.load(k_ptr + ptrs)
        v = tl.load(v_ptr + ptrs)
    qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # [BLOCK_M, BLOCK_N], log2 units
    if MASKED:
        ok = (offs_n[None, :] <= q_pos[:, None]) & kv_ok[None, :]
        qk = tl.where(ok, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))  # m_i starts finite, so never -inf - -inf
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(qk - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, m_new, l_i


# variants must not depend on step sizes (autotune.SPECIALIZATION)
@triton.jit(do_not_specialize_on_alignment=["cu_ptr", "seq_lens_ptr", "bt_ptr"])
def _prefill_attention_kernel(
    q_ptr,  # [total_q, Hq, HEAD_DIM], rows strided
    k_ptr,  # [num_blocks, KV_BLOCK_SIZE, Hkv, HEAD_DIM]
    v_ptr,  # [num_blocks, KV_BLOCK_SIZE, Hkv, HEAD_DIM], k's strides
    out_ptr,  # [total_q, Hq, HEAD_DIM]
    cu_ptr,  # [B+1] int32
    seq_lens_ptr,  # [B] int32
    bt_ptr,  # [B, max_blocks] int32
    stride_qt, stride_qh,  # q strides (token, head)
    stride_kb, stride_kt, stride_kh,  # cache strides (block, slot, head)
    stride_ot, stride_oh,  # out strides (token, head)
    stride_bt,  # block_tables row stride
    qk_scale,  # scale * log2(e)
    q_bucket,  # next_pow2(max_seqlen_q): autotune key only
    GROUP: tl.constexpr,  # Hq // Hkv
    HEAD_DIM: tl.constexpr,
    KV_BLOCK_SIZE: tl.constexpr,
    PRECISION: tl.constexpr,  # tl.dot input precision ("ieee" for fp32 inputs)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    head = tl.program_id(0)
    pid_m = tl.num_programs(1) - 1 - tl.program_id(1)  # longest causal tiles first
    b = tl.program_id(2)
    q_start = tl.load(cu_ptr + b)
    q_len = tl.load(cu_ptr + b + 1) - q_start
    if pid_m * BLOCK_M >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + b)
    first_pos = seq_len - q_len + pid_m * BLOCK_M  # absolute position of this tile's first query

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    m_ok = offs_m < q_len
    rows = (q_start + offs_m).to(tl.int64)
    q = tl.load(q_ptr + rows[:, None] * stride_qt + head * stride_qh + offs_d[None, :], mask=m_ok[:, None],
                other=0.0)
    q_pos = first_pos + tl.arange(0, BLOCK_M)

    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    bt_row_ptr = bt_ptr + b.to(tl.int64) * stride_bt
    kv_head_off = (head // GROUP) * stride_kh

    # keys [0, full_end) are visible to every query of the tile (and < seq_len): no masks
    full_end = (first_pos // BLOCK_N) * BLOCK_N
    for start in range(0, full_end, BLOCK_N):
        acc, m_i, l_i = _attn_tile(acc, m_i, l_i, q, q_pos, start, seq_len, k_ptr, v_ptr, bt_row_ptr,
                                   kv_head_off, stride_kb, stride_kt, offs_d, qk_scale,
                                   KV_BLOCK_SIZE, BLOCK_N, False, PRECISION)
    # the causal band: up to the tile's last query (or the sequence's end)
    band_end = tl.minimum(seq_len, first_pos + BLOCK_M)
    for start in range(full_end, band_end, BLOCK_N):
        acc, m_i, l_i = _attn_tile(acc, m_i, l_i, q, q_pos, start, seq_len, k_ptr, v_ptr, bt_row_ptr,
                                   kv_head_off, stride_kb, stride_kt, offs_d, qk_scale,
                                   KV_BLOCK_SIZE, BLOCK_N, True, PRECISION)

    o = acc / l_i[:, None]  # every valid row saw key 0, so l_i > 0
    tl.store(out_ptr + rows[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
             o.to(out_ptr.dtype.element_ty), mask=m_ok[:, None])


_kernel = tuned(_prefill_attention_kernel, CONFIGS, key=KEY, name="prefill_attention")


def prefill_attention(q, k_cache, v_cache, cu_seqlens_q, seq_lens, block_tables, max_seqlen_q: int,
                      scale: float, *, out=None, config: triton.Config | None = None) -> torch.Tensor:
    """Causal attention of the packed new tokens `q` over each sequence's paged context (module doc).
    `max_seqlen_q` (a host int >= every q_len) sizes the grid. `config` forces one of CONFIGS (tests)."""
    name = "prefill_attention"
    hq, hkv, d, bs = check_q_cache(name, q, k_cache, v_cache)
    if cu_seqlens_q.dim() != 1 or cu_seqlens_q.shape[0] < 2:
        raise ValueError(f"{name}: cu_seqlens_q must be int32 [B+1], got {tuple(cu_seqlens_q.shape)}")
    batch = cu_seqlens_q.shape[0] - 1
    check_int_vector(name, "cu_seqlens_q", cu_seqlens_q, batch + 1, q.device)
    check_int_vector(name, "seq_lens", seq_lens, batch, q.device)
    check_block_tables(name, block_tables, batch, q.device)
    max_seqlen_q = int(max_seqlen_q)
    if max_seqlen_q < 0:
        raise ValueError(f"{name}: max_seqlen_q must be >= 0, got {max_seqlen_q}")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise ValueError(f"{name}: scale must be a finite float, got {scale!r}")
    out = check_out(name, out, q)
    if q.shape[0] == 0 or max_seqlen_q == 0:
        return out
    grid = lambda meta: (hq, triton.cdiv(max_seqlen_q, meta["BLOCK_M"]), batch)  # noqa: E731
    _kernel(
        grid, q, k_cache, v_cache, out, cu_seqlens_q, seq_lens, block_tables,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        out.stride(0), out.stride(1), block_tables.stride(0),
        float(scale) * LOG2E, next_pow2(max_seqlen_q),
        GROUP=hq // hkv, HEAD_DIM=d, KV_BLOCK_SIZE=bs,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        config=config,
    )
    return out
