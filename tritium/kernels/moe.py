"""Mixture-of-experts MLP: each token through the gated MLPs of its top-k experts, weighted and summed.

    x        [T, H]      fp16/bf16/fp32, last dim contiguous
    w13      [E, 2I, H]  each expert's gate rows then up rows
    w2       [E, H, I]   each expert's down projection
    topk_ids [T, K] int, topk_weights [T, K] float (moe_route)
    out[t] = sum_k topk_weights[t, k] * w2[e] @ (silu(w13[e, :I] @ x[t]) * (w13[e, I:] @ x[t])),  e = topk_ids[t, k]

A grouped GEMM over the T * K (token, expert) pairs: moe_align (moe_routing.py) groups the pairs by expert and
pads each expert's run to BLOCK_M rows, so every row block of the sorted order belongs to one expert. Program
(m, n) multiplies the rows of block m (gathered from x by the pairs' tokens) with an N tile of that expert's
weight and scatters the products back to the pairs' rows. Two launches (gate|up, then down, which applies
SiLU-and-mul to its input as it loads it and scales each row by its routing weight), then a sum over the K rows
of each token.

CUDA-graph safe: moe_align's sizes follow T alone (no host sync), the grid too (blocks past the last expert's
run read their expert as -1 and return), and BLOCK_M follows next_pow2(T), so a step's size bucket fixes the
compiled variants (autotune.SPECIALIZATION).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritium.autotune import next_pow2, tuned
from tritium.kernels.attention_ref import check_out
from tritium.kernels.moe_routing import moe_align, moe_route

__all__ = ["fused_moe", "fused_moe_ref", "moe_align", "moe_block_m", "moe_route", "CONFIGS"]

CONFIGS = [
    triton.Config({"BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_N": 128, "BLOCK_K": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_N": 64, "BLOCK_K": 128}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_N": 128, "BLOCK_K": 128}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_N": 32, "BLOCK_K": 128}, num_warps=4, num_stages=4),
]
INTERPRET_CONFIG = triton.Config({"BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4)
KEY = ["N", "K", "BLOCK_M", "rows_bucket"]


def moe_block_m(num_tokens: int, top_k: int, num_experts: int) -> int:
    """Rows per block: about the pairs an expert gets (16 to 64), from the token bucket only."""
    per_expert = next_pow2(num_tokens) * top_k // num_experts
    return min(64, max(16, next_pow2(per_expert)))


# variants must not depend on step sizes (autotune.SPECIALIZATION)
@triton.jit(do_not_specialize=["num_pairs"],
            do_not_specialize_on_alignment=["pairs_ptr", "block_expert_ptr", "row_weight_ptr"])
def _moe_gemm_kernel(
    a_ptr,  # [T, K] rows per token (A_BY_TOKEN) or [T * TOPK, K] rows per pair ([.., 2K] when GATED); last
            # dim contiguous
    w_ptr,  # [E, N, K] last dim contiguous
    c_ptr,  # [T * TOPK, N] rows per pair, last dim contiguous
    pairs_ptr,  # [num_blocks * BLOCK_M] int32: sorted pair indices, num_pairs for padding
    block_expert_ptr,  # [num_blocks] int32, -1: no work
    row_weight_ptr,  # [T * TOPK] fp32 routing weights (read when ROW_WEIGHT)
    num_pairs,  # T * TOPK
    stride_a, stride_we, stride_wn, stride_c,
    rows_bucket,  # next_pow2(T): autotune key only
    N: tl.constexpr,
    K: tl.constexpr,
    TOPK: tl.constexpr,
    A_BY_TOKEN: tl.constexpr,  # a's row of pair p is p // TOPK (its token), else p
    ROW_WEIGHT: tl.constexpr,  # scale each product row by its pair's routing weight
    GATED: tl.constexpr,  # a's rows are [gate | up]: the input is silu(gate) * up
    PRECISION: tl.constexpr,  # tl.dot input precision ("ieee" for fp32 inputs)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr,  # K % BLOCK_K == 0: no mask along K (heuristic)
):
    pid_m = tl.program_id(0)
    expert = tl.load(block_expert_ptr + pid_m)
    if expert < 0:
        return
    pair = tl.load(pairs_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))  # [BLOCK_M]
    row_ok = pair < num_pairs
    a_row = pair // TOPK if A_BY_TOKEN else pair
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + a_row.to(tl.int64)[:, None] * stride_a + offs_k[None, :]  # [BLOCK_M, BLOCK_K]
    w_ptrs = w_ptr + expert.to(tl.int64) * stride_we + offs_n[None, :] * stride_wn + offs_k[:, None]  # [BK, BN]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        a_ok = row_ok[:, None] if EVEN_K else row_ok[:, None] & (k0 + offs_k < K)[None, :]
        w_ok = n_ok[None, :] if EVEN_K else (k0 + offs_k < K)[:, None] & n_ok[None, :]
        a = tl.load(a_ptrs, mask=a_ok, other=0.0)
        if GATED:  # rounded once, as silu_and_mul does: the same bits as the separate launch
            g = a.to(tl.float32)
            a = (g * tl.sigmoid(g) * tl.load(a_ptrs + K, mask=a_ok, other=0.0).to(tl.float32)).to(a.dtype)
        w = tl.load(w_ptrs, mask=w_ok, other=0.0)
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    if ROW_WEIGHT:
        acc = acc * tl.load(row_weight_ptr + pair, mask=row_ok, other=0.0)[:, None]
    c = c_ptr + pair.to(tl.int64)[:, None] * stride_c + offs_n[None, :]
    tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


HEURISTICS = {"EVEN_K": lambda a: a["K"] % a["BLOCK_K"] == 0}
_kernel = tuned(_moe_gemm_kernel, CONFIGS, key=KEY, interpret_config=INTERPRET_CONFIG, heuristics=HEURISTICS,
                name="moe_gemm")


def _check(x, w13, w2, topk_weights, topk_ids):
    name = "fused_moe"
    if x.dim() != 2 or w13.dim() != 3 or w2.dim() != 3:
        raise ValueError(f"{name}: x must be [T, H], w13 [E, 2I, H] and w2 [E, H, I]; got {tuple(x.shape)}, "
                         f"{tuple(w13.shape)}, {tuple(w2.shape)}")
    e, two_i, h = w13.shape
    if x.shape[1] != h or two_i % 2 or tuple(w2.shape) != (e, h, two_i // 2):
        raise ValueError(f"{name}: shapes do not agree: x {tuple(x.shape)}, w13 {tuple(w13.shape)}, "
                         f"w2 {tuple(w2.shape)}")
    if not (x.dtype == w13.dtype == w2.dtype):
        raise ValueError(f"{name}: x, w13 and w2 must share a dtype, got {x.dtype}, {w13.dtype}, {w2.dtype}")
    if topk_ids.shape != topk_weights.shape or topk_ids.dim() != 2 or topk_ids.shape[0] != x.shape[0]:
        raise ValueError(f"{name}: topk_ids and topk_weights must both be [T, K] with T = {x.shape[0]}, got "
                         f"{tuple(topk_ids.shape)} and {tuple(topk_weights.shape)}")
    if x.stride(1) != 1 or not (w13.is_contiguous() and w2.is_contiguous()):
        raise ValueError(f"{name}: x needs a contiguous last dim, w13 and w2 must be contiguous")


def _gemm(a, w, c, pairs, block_expert, row_weight, tokens, top_k, by_token, block_m, config=None, gated=False):
    n, k = w.shape[1], w.shape[2]
    grid = lambda meta: (block_expert.numel(), triton.cdiv(n, meta["BLOCK_N"]))  # noqa: E731
    _kernel(grid, a, w, c, pairs, block_expert, c if row_weight is None else row_weight, tokens * top_k,
            a.stride(0), w.stride(0), w.stride(1), c.stride(0), next_pow2(tokens),
            N=n, K=k, TOPK=top_k, A_BY_TOKEN=by_token, ROW_WEIGHT=row_weight is not None, GATED=gated,
            PRECISION="ieee" if a.dtype == torch.float32 else "tf32", BLOCK_M=block_m, config=config)


def fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor, *, out: torch.Tensor | None = None,
              config: triton.Config | None = None) -> torch.Tensor:
    """The MoE MLP of x [T, H] (module doc) -> out [T, H] in x's dtype (new, or `out=`); `config` forces
    one of CONFIGS (tests)."""
    _check(x, w13, w2, topk_weights, topk_ids)
    t, top_k = topk_ids.shape
    num_experts, inter = w13.shape[0], w13.shape[1] // 2
    out = check_out("fused_moe", out, x)
    if t == 0:
        return out
    block_m = moe_block_m(t, top_k, num_experts)
    pairs, block_expert = moe_align(topk_ids, num_experts, block_m)
    gate_up = x.new_empty((t * top_k, 2 * inter))
    _gemm(x, w13, gate_up, pairs, block_expert, None, t, top_k, True, block_m, config)
    down = x.new_empty((t * top_k, x.shape[1]))
    row_weight = topk_weights.reshape(-1).float().contiguous()
    _gemm(gate_up, w2, down, pairs, block_expert, row_weight, t, top_k, False, block_m, config, gated=True)
    return torch.sum(down.view(t, top_k, -1), dim=1, out=out)


def fused_moe_ref(x, w13, w2, topk_weights, topk_ids) -> torch.Tensor:
    """Plain PyTorch, in fp32: the sum over each token's experts of weight * expert MLP."""
    xf, inter = x.float(), w13.shape[1] // 2
    out = torch.zeros_like(xf)
    for e in range(w13.shape[0]):
        token, slot = torch.nonzero(topk_ids == e, as_tuple=True)
        if token.numel() == 0:
            continue
        h = xf[token] @ w13[e].float().t()
        h = torch.nn.functional.silu(h[:, :inter]) * h[:, inter:]
        out.index_add_(0, token, (h @ w2[e].float().t()) * topk_weights[token, slot].float()[:, None])
    return out.to(x.dtype)
