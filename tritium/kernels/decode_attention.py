"""Paged decode attention: one new query per sequence over its whole cached context (split-KV, GQA packed).

    q            [B, Hq, D]  fp16/bf16/fp32, rows may be strided, last dim contiguous
    k/v_cache    [num_blocks, block_size, Hkv, D]  same dtype; the new token's K/V is already stored
    seq_lens     int32 [B]: context length including the new token; 0 marks a padded (CUDA-graph) row
    block_tables int32 [B, max_blocks]
    out          [B, Hq, D]  q's dtype (new tensor, or `out=`; not in place)

    out[b, h] = softmax(scale * q[b, h] . K_b[0..n-1, h // G]^T) @ V_b[0..n-1, h // G],  n = seq_lens[b]
    (zeros where n == 0; nothing of the cache is read for such rows)

Stage 1 (flash-decoding): one program per (sequence, kv head, split). Split s covers positions
[s*L, (s+1)*L) of the sequence's context, L = cdiv(n, S) rounded up to BLOCK_N, so every split of a long
context gets work whatever max_blocks is. The G query heads of the kv head are packed as the rows of one
tile (padded to 16 rows for tl.dot, or reduced elementwise: USE_DOT), so each KV tile is read once for the
group. Each split writes its normalized partial output and log2-sum-exp; stage 2 merges the S partials.
With S == 1, stage 1 writes the final output directly (one launch).

CUDA-graph safe: the grid is (B, Hkv, S) with S from static sizes (B, Hkv, SM count, max_blocks*block_size),
scratch is allocated from static sizes, no host syncs. Autotuning syncs: tune each shape bucket eagerly
before capture.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from tritium.autotune import next_pow2, pdl_launch, pdl_wait, tuned
from tritium.kernels.attention_ref import (
    check_block_tables,
    check_int_vector,
    check_out,
    check_q_cache,
    decode_attention_ref,
)
from tritium.platform import INTERPRET

__all__ = ["decode_attention", "decode_attention_ref", "decode_num_splits", "CONFIGS"]

CONFIGS = [
    triton.Config({"BLOCK_N": 64, "USE_DOT": True}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_N": 128, "USE_DOT": True}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_N": 32, "USE_DOT": True}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_N": 128, "USE_DOT": True}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_N": 32, "USE_DOT": False}, num_warps=4, num_stages=2),
]
KEY = ["GROUP_PAD", "HEAD_DIM", "KV_BLOCK_SIZE", "NUM_SPLITS", "ctx_bucket"]
LOG2E = 1.4426950408889634
MIN_SPLIT_TOKENS = 256  # a split shorter than this costs more in merging than it gains
MAX_SPLITS = 64


# variants must not depend on step sizes (autotune.SPECIALIZATION)
@triton.jit(do_not_specialize_on_alignment=["seq_lens_ptr", "bt_ptr"])
def _decode_split_kernel(
    q_ptr,  # [B, Hq, HEAD_DIM], rows strided
    k_ptr,  # [num_blocks, KV_BLOCK_SIZE, Hkv, HEAD_DIM]
    v_ptr,  # [num_blocks, KV_BLOCK_SIZE, Hkv, HEAD_DIM], k's strides
    out_ptr,  # [B, Hq, HEAD_DIM]: written when NUM_SPLITS == 1
    mid_o_ptr,  # [B, Hq, NUM_SPLITS, HEAD_DIM] fp32 contiguous: normalized partial outputs
    mid_lse_ptr,  # [B, Hq, NUM_SPLITS] fp32 contiguous: log2-sum-exp of each split (-inf if empty)
    seq_lens_ptr,  # [B] int32
    bt_ptr,  # [B, max_blocks] int32
    stride_qb, stride_qh,  # q strides (batch, head)
    stride_kb, stride_kt, stride_kh,  # cache strides (block, slot, head)
    stride_ob, stride_oh,  # out strides (batch, head)
    stride_bt,  # block_tables row stride
    qk_scale,  # scale * log2(e)
    ctx_bucket,  # next_pow2(max_blocks * block_size): autotune key only
    GROUP: tl.constexpr,  # Hq // Hkv
    GROUP_PAD: tl.constexpr,  # next_pow2(GROUP)
    DOT_ROWS: tl.constexpr,  # max(16, GROUP_PAD): rows of the packed tile when USE_DOT
    HEAD_DIM: tl.constexpr,
    KV_BLOCK_SIZE: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    PRECISION: tl.constexpr,  # tl.dot input precision ("ieee" for fp32 inputs)
    BLOCK_N: tl.constexpr,
    USE_DOT: tl.constexpr,
    PDL: tl.constexpr,  # programmatic dependent launch: wait for the kernel before (autotune.pdl_launch)
):
    pdl_wait(PDL)
    BLOCK_H: tl.constexpr = DOT_ROWS if USE_DOT else GROUP_PAD
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + b)

    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, HEAD_DIM)
    h_ok = offs_h < GROUP
    heads = kvh * GROUP + offs_h
    q = tl.load(q_ptr + b.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=h_ok[:, None], other=0.0)
    if not USE_DOT:
        q = q.to(tl.float32)

    split_len = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)  # empty range for seq_len 0: no KV read

    m_i = tl.full([BLOCK_H], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, HEAD_DIM], dtype=tl.float32)
    bt_row_ptr = bt_ptr + b.to(tl.int64) * stride_bt
    kv_head_off = kvh * stride_kh
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        kv_ok = offs_n < end
        blk = tl.load(bt_row_ptr + offs_n // KV_BLOCK_SIZE, mask=kv_ok, other=0)
        row = blk.to(tl.int64) * stride_kb + (offs_n % KV_BLOCK_SIZE) * stride_kt + kv_head_off
        ptrs = row[:, None] + offs_d[None, :]
        k = tl.load(k_ptr + ptrs, mask=kv_ok[:, None], other=0.0)
        v = tl.load(v_ptr + ptrs, mask=kv_ok[:, None], other=0.0)
        if USE_DOT:
            qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # [BLOCK_H, BLOCK_N]
        else:
            qk = tl.sum(q[:, None, :] * k.to(tl.float32)[None, :, :], 2)
        qk = tl.where(kv_ok[None, :], qk * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))  # m_i starts finite: no -inf - -inf
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if USE_DOT:
            pv = tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        else:
            pv = tl.sum(p[:, :, None] * v.to(tl.float32)[None, :, :], 1)
        acc = acc * alpha[:, None] + pv
        m_i = m_new

    o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # an empty split has acc == 0: writes zeros
    if NUM_SPLITS == 1:
        o_ptrs = out_ptr + b.to(tl.int64) * stride_ob + heads[:, None] * stride_oh + offs_d[None, :]
        tl.store(o_ptrs, o.to(out_ptr.dtype.element_ty), mask=h_ok[:, None])
    else:
        row_id = (b.to(tl.int64) * (tl.num_programs(1) * GROUP) + heads) * NUM_SPLITS + split  # [BLOCK_H]
        tl.store(mid_o_ptr + row_id[:, None] * HEAD_DIM + offs_d[None, :], o, mask=h_ok[:, None])
        lse = tl.where(l_i > 0, m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))
        tl.store(mid_lse_ptr + row_id, lse, mask=h_ok)


@triton.jit
def _decode_merge_kernel(
    mid_o_ptr,  # [B, Hq, NUM_SPLITS, HEAD_DIM] fp32
    mid_lse_ptr,  # [B, Hq, NUM_SPLITS] fp32
    out_ptr,  # [B, Hq, HEAD_DIM]
    stride_ob, stride_oh,  # out strides (batch, head)
    NUM_SPLITS: tl.constexpr,
    SPLITS_PAD: tl.constexpr,  # next_pow2(NUM_SPLITS)
    HEAD_DIM: tl.constexpr,
    PDL: tl.constexpr,
):
    pdl_wait(PDL)
    b = tl.program_id(0)
    h = tl.program_id(1)
    base = b.to(tl.int64) * tl.num_programs(1) + h  # row of [B, Hq]
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    s_ok = offs_s < NUM_SPLITS
    lse = tl.load(mid_lse_ptr + base * NUM_SPLITS + offs_s, mask=s_ok, other=float("-inf"))
    m = tl.max(lse, 0)
    m = tl.where(m == float("-inf"), 0.0, m)  # every split empty (seq_len 0): all weights 0
    w = tl.exp2(lse - m)
    o = tl.load(mid_o_ptr + (base * NUM_SPLITS + offs_s)[:, None] * HEAD_DIM + offs_d[None, :],
                mask=s_ok[:, None], other=0.0)
    den = tl.sum(w, 0)
    res = tl.sum(w[:, None] * o, 0) / tl.where(den > 0, den, 1.0)
    tl.store(out_ptr + b.to(tl.int64) * stride_ob + h * stride_oh + offs_d, res.to(out_ptr.dtype.element_ty))


_kernel = tuned(_decode_split_kernel, CONFIGS, key=KEY, name="decode_attention")
_num_sms_cache: dict = {}


def _num_sms(device: torch.device) -> int:
    if INTERPRET or device.type != "cuda":
        return 4  # the interpreter: a few splits, small grids
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _num_sms_cache:
        _num_sms_cache[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _num_sms_cache[idx]


def decode_num_splits(batch: int, num_kv_heads: int, max_context: int, device) -> int:
    """Splits per (sequence, kv head), from static sizes only: enough programs to fill the SMs about 4
    times over, no split shorter than MIN_SPLIT_TOKENS of the largest possible context; a power of two, and
    the same for every batch of one power-of-two bucket (the split count is a compile-time constant: a
    bucket warmed up at start-up must cover any batch in it)."""
    want = triton.cdiv(4 * _num_sms(torch.device(device)), next_pow2(batch) * num_kv_heads)
    cap = max(1, max_context // MIN_SPLIT_TOKENS)
    n = max(1, min(want, cap, MAX_SPLITS))
    return 1 << (n.bit_length() - 1)  # round down to a power of two


def decode_attention(q, k_cache, v_cache, seq_lens, block_tables, scale: float, *, out=None,
                     num_splits: int | None = None, config: triton.Config | None = None) -> torch.Tensor:
    """Attention of one query per sequence over its paged context (module doc). `num_splits` overrides
    the split count (default decode_num_splits); `config` forces one of CONFIGS (tests)."""
    name = "decode_attention"
    hq, hkv, d, bs = check_q_cache(name, q, k_cache, v_cache)
    batch = q.shape[0]
    check_int_vector(name, "seq_lens", seq_lens, batch, q.device)
    check_block_tables(name, block_tables, batch, q.device)
    if not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise ValueError(f"{name}: scale must be a finite float, got {scale!r}")
    out = check_out(name, out, q)
    if batch == 0:
        return out
    max_context = block_tables.shape[1] * bs
    if num_splits is None:
        num_splits = decode_num_splits(batch, hkv, max_context, q.device)
    elif not (isinstance(num_splits, int) and num_splits >= 1):
        raise ValueError(f"{name}: num_splits must be an int >= 1, got {num_splits!r}")
    group = hq // hkv
    if num_splits > 1:
        mid_o = torch.empty((batch, hq, num_splits, d), dtype=torch.float32, device=q.device)
        mid_lse = torch.empty((batch, hq, num_splits), dtype=torch.float32, device=q.device)
    else:
        mid_o = mid_lse = out  # unused
    _kernel(
        (batch, hkv, num_splits), q, k_cache, v_cache, out, mid_o, mid_lse, seq_lens, block_tables,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        out.stride(0), out.stride(1), block_tables.stride(0),
        float(scale) * LOG2E, next_pow2(max_context),
        GROUP=group, GROUP_PAD=next_pow2(group), DOT_ROWS=max(16, next_pow2(group)), HEAD_DIM=d,
        KV_BLOCK_SIZE=bs, NUM_SPLITS=num_splits, PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        config=config, **pdl_launch(),
    )
    if num_splits > 1:
        _decode_merge_kernel[(batch, hq)](
            mid_o, mid_lse, out, out.stride(0), out.stride(1),
            NUM_SPLITS=num_splits, SPLITS_PAD=next_pow2(num_splits), HEAD_DIM=d, num_warps=4, **pdl_launch(),
        )
    return out
