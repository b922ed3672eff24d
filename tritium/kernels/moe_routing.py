"""MoE routing: each token's top-k experts, and the pairs (token, expert) grouped by expert for the grouped GEMM.

    moe_route(router_logits [T, E], K, renormalize) -> (topk_weights [T, K] fp32, topk_ids [T, K] int32)
        softmax over the E experts in fp32, the K largest in descending order, rescaled to sum to 1 when
        renormalize (Qwen3-MoE's norm_topk_prob, Mixtral). One program per token.
    moe_align(topk_ids [T, K], E, block_m) -> (sorted_pairs [M * block_m] int32, block_expert [M] int32)
        the pair indices t * K + k grouped by expert (in pair order within an expert), each expert's run
        padded with T * K to a multiple of block_m; block_expert[m] is the expert of block m, -1 past the
        last run. M = moe_num_blocks(T * K, E, block_m) covers any routing, so it depends on sizes alone.

moe_align's kernel is one program: it counts the pairs per expert, lays out the padded runs (prefix sums),
labels the blocks and padding rows, then places the pairs chunk by chunk, each pair at its expert's fill point
plus its rank among the chunk's pairs of that expert. One program walks every pair in turn, so it serves steps
of up to KERNEL_MAX_PAIRS pairs (every decode step and small prefills, where the ~25 small launches of the
torch form would dominate: the decode graphs replay each launch per layer); larger steps take the torch form,
whose sort spreads over the GPU. Both kernels equal their torch forms (moe_route_ref, moe_align_torch) exactly,
which is what the tests check.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritium.autotune import next_pow2

__all__ = ["moe_align", "moe_align_kernel", "moe_align_torch", "moe_num_blocks", "moe_route", "moe_route_ref"]

CHUNK = 64  # pairs placed per step of moe_align (a [CHUNK, CHUNK] rank and a [CHUNK, E] gather per step)
ROWS = 128  # rows labelled per step of moe_align
KERNEL_MAX_PAIRS = 2048  # moe_align's one program up to this many pairs (256 tokens at top 8), torch above


def moe_num_blocks(num_pairs: int, num_experts: int, block_m: int) -> int:
    """Blocks enough for any routing of num_pairs pairs: each of at most min(pairs, E) runs pads < block_m."""
    return triton.cdiv(num_pairs + min(num_pairs, num_experts) * (block_m - 1), block_m)


@triton.jit
def _route_kernel(
    logits_ptr,  # [T, E] any float dtype, rows strided, last dim contiguous
    weights_ptr,  # [T, K] fp32 contiguous
    ids_ptr,  # [T, K] int32 contiguous
    stride_l,
    E: tl.constexpr,
    E_PAD: tl.constexpr,  # next_pow2(E)
    K: tl.constexpr,
    K_PAD: tl.constexpr,  # next_pow2(K)
    RENORMALIZE: tl.constexpr,
):
    t = tl.program_id(0)
    offs = tl.arange(0, E_PAD)
    x = tl.load(logits_ptr + t.to(tl.int64) * stride_l + offs, mask=offs < E, other=float("-inf")).to(tl.float32)
    p = tl.exp(x - tl.max(x, 0))
    p = p / tl.sum(p, 0)  # padding lanes are 0
    p = tl.where(offs < E, p, -1.0)  # never chosen
    slots = tl.arange(0, K_PAD)
    top_w = tl.zeros([K_PAD], dtype=tl.float32)
    top_i = tl.zeros([K_PAD], dtype=tl.int32)
    for k in tl.static_range(K):
        m = tl.max(p, 0)
        i = tl.min(tl.where(p == m, offs, E_PAD), 0)  # the lowest index among ties
        top_w = tl.where(slots == k, m, top_w)
        top_i = tl.where(slots == k, i, top_i)
        p = tl.where(offs == i, -1.0, p)
    if RENORMALIZE:
        top_w = top_w / tl.sum(top_w, 0)  # unused slots hold 0
    tl.store(weights_ptr + t * K + slots, top_w, mask=slots < K)
    tl.store(ids_ptr + t * K + slots, top_i, mask=slots < K)


@triton.jit(do_not_specialize=["num_pairs", "num_rows"])
def _align_kernel(
    ids_ptr,  # [P] int32 / int64: the expert of each pair
    sorted_ptr,  # [num_rows] int32 out
    block_expert_ptr,  # [num_rows // BLOCK_M] int32 out
    num_pairs, num_rows,
    E: tl.constexpr,
    E_PAD: tl.constexpr,  # next_pow2(E)
    BLOCK_M: tl.constexpr,
    CHUNK: tl.constexpr,
    ROWS: tl.constexpr,
):
    experts = tl.arange(0, E_PAD)
    lanes = tl.arange(0, CHUNK)
    counts = tl.zeros([E_PAD], dtype=tl.int32)
    for c0 in range(0, num_pairs, CHUNK):
        ok = c0 + lanes < num_pairs
        e = tl.load(ids_ptr + c0 + lanes, mask=ok, other=0).to(tl.int32)
        counts += tl.histogram(e, E_PAD, mask=ok)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = tl.cumsum(padded, 0)  # [E_PAD]: the end row of each expert's run
    starts = ends - padded
    # Label rows: the expert of each block (-1 past the runs) and the padding rows of each run (sentinel).
    for r0 in range(0, num_rows, ROWS):
        rows = r0 + tl.arange(0, ROWS)
        expert = tl.sum((ends[None, :] <= rows[:, None]).to(tl.int32), 1)  # runs ending at or before the row
        expert = tl.where(expert < E, expert, -1)
        one_hot = experts[None, :] == expert[:, None]  # [ROWS, E_PAD]; all false past the runs
        local = rows - tl.sum(tl.where(one_hot, starts[None, :], 0), 1)
        pad = local >= tl.sum(tl.where(one_hot, counts[None, :], 0), 1)  # true past the runs too
        tl.store(sorted_ptr + rows, tl.full([ROWS], 0, tl.int32) + num_pairs, mask=(rows < num_rows) & pad)
        tl.store(block_expert_ptr + rows // BLOCK_M, expert, mask=(rows < num_rows) & (rows % BLOCK_M == 0))
    # Place the pairs: fill[e] is the next free row of expert e's run.
    fill = starts
    earlier = lanes[None, :] < lanes[:, None]  # [CHUNK, CHUNK]: lane j before lane i
    for c0 in range(0, num_pairs, CHUNK):
        ok = c0 + lanes < num_pairs
        e = tl.where(ok, tl.load(ids_ptr + c0 + lanes, mask=ok, other=0).to(tl.int32), -1)
        rank = tl.sum((earlier & (e[None, :] == e[:, None])).to(tl.int32), 1)  # same expert, earlier lane
        one_hot = experts[None, :] == e[:, None]  # [CHUNK, E_PAD]
        dest = tl.sum(tl.where(one_hot, fill[None, :], 0), 1) + rank
        tl.store(sorted_ptr + dest, (c0 + lanes).to(tl.int32), mask=ok)
        fill += tl.histogram(e, E_PAD, mask=ok)


def moe_route(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits [T, E] -> (topk_weights [T, K] fp32, topk_ids [T, K] int32) (module doc)."""
    t, e = router_logits.shape
    if not 1 <= top_k <= e or router_logits.stride(-1) != 1:
        raise ValueError(f"moe_route: need 1 <= top_k <= experts ({top_k}, {e}) and a contiguous last dim")
    weights = torch.empty((t, top_k), dtype=torch.float32, device=router_logits.device)
    ids = torch.empty((t, top_k), dtype=torch.int32, device=router_logits.device)
    if t:
        _route_kernel[(t,)](router_logits, weights, ids, router_logits.stride(0), E=e, E_PAD=next_pow2(e),
                            K=top_k, K_PAD=next_pow2(top_k), RENORMALIZE=renormalize, num_warps=4)
    return weights, ids


def moe_route_ref(router_logits, top_k: int, renormalize: bool):
    probs = torch.softmax(router_logits.float(), dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids.to(torch.int32)


def moe_align(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted_pairs, block_expert) of topk_ids [T, K] (module doc): the kernel up to KERNEL_MAX_PAIRS pairs,
    the torch form above (a size, not data: a step's bucket always takes the same path)."""
    if topk_ids.numel() > KERNEL_MAX_PAIRS:
        return moe_align_torch(topk_ids, num_experts, block_m)
    return moe_align_kernel(topk_ids, num_experts, block_m)


def moe_align_kernel(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """moe_align by the one-program kernel, at any size."""
    flat = topk_ids.reshape(-1)
    num_blocks = moe_num_blocks(flat.numel(), num_experts, block_m)
    sorted_pairs = torch.empty(num_blocks * block_m, dtype=torch.int32, device=flat.device)
    block_expert = torch.empty(num_blocks, dtype=torch.int32, device=flat.device)
    if num_blocks:
        _align_kernel[(1,)](flat, sorted_pairs, block_expert, flat.numel(), sorted_pairs.numel(), E=num_experts,
                            E_PAD=next_pow2(num_experts), BLOCK_M=block_m, CHUNK=CHUNK, ROWS=ROWS, num_warps=8)
    return sorted_pairs, block_expert


def moe_align_torch(topk_ids: torch.Tensor, num_experts: int, block_m: int):
    """moe_align in torch ops of static sizes (CUDA-graph safe, no host sync)."""
    device = topk_ids.device
    flat = topk_ids.reshape(-1).long()
    pairs = flat.numel()
    counts = torch.zeros(num_experts, dtype=torch.long, device=device).scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    ends = padded.cumsum(0)
    order = torch.argsort(flat, stable=True)  # pairs in expert order
    expert_of = flat[order]
    rank = torch.arange(pairs, device=device) - (counts.cumsum(0) - counts)[expert_of]  # place within the run
    num_blocks = moe_num_blocks(pairs, num_experts, block_m)
    sorted_pairs = torch.full((num_blocks * block_m,), pairs, dtype=torch.int32, device=device)
    sorted_pairs.scatter_(0, (ends - padded)[expert_of] + rank, order.to(torch.int32))
    block_expert = torch.searchsorted(ends, torch.arange(num_blocks, device=device) * block_m, right=True)
    return sorted_pairs, torch.where(block_expert < num_experts, block_expert, -1).to(torch.int32)
