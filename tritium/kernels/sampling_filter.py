"""Sampling with top-k / top-p / min-p: exact kept sets without sorting the vocabulary.

Semantics (joint, all on the unfiltered distribution p = softmax(z) of a row, z = logits / T):
    top-k (k > 0):  keep z >= v_k, v_k = the k-th largest z (ties with it kept; k > V keeps all)
    top-p (p < 1):  keep z >= v_p, v_p = the largest value v with mass(z >= v) >= p (the smallest set of top
                    tokens whose mass reaches p, ties with its last value kept)
    min-p (> 0):    keep p_i >= min_p * max p, i.e. z >= max z + log(min_p)
    kept = the intersection, i.e. z >= max(v_k, v_p, min-p threshold); then Gumbel-max over it.
top-k and top-p share one predicate: v* = max(v_k, v_p) is the largest present value v with
count(z >= v) >= k or mass(z >= v) >= p * sum(exp z).

Fixed launches (all CUDA-graph safe: fixed grids, no host sync):
1. _filter_partial_kernel, grid (B, C): one CHUNK of the row per program, read once, over BLOCK lanes.
   Each lane keeps its winner (noisy for unfiltered sampled rows), its largest z and its second largest;
   the program writes the chunk's winner (used by rows without filters), (max, sum exp) of z and its
   candidates: the lane maxima above
   the largest lane second value F_c, so every token of the chunk with z > F_c is a candidate (about
   sqrt(BLOCK) of them: the top tokens rarely share a lane).
2. _filter_finish_kernel (sampling_finish.py), grid (B,): merges the chunks (max, sum exp; the unfiltered
   winner for rows without filters) and gathers the row's window: the candidates with z >= max - D, D the widest of a
   schedule with at most NWIN of them (all widths counted at once: a histogram of the first width each
   candidate passes), so every token above the window floor is in it. Sorts the window (count and mass at
   or above each value: its rank and a cumulative sum; on an NSMALL-wide tile when it is that small) to find
   v* (sampling_threshold.settle_window). If the kept set lies above
   the floor (the usual case: peaked LLM distributions), draws among the kept window tokens, their noise
   recomputed from the token ids; otherwise marks the row pending.
3. sampling_bracket.py, one cooperative launch for the pending rows only (none pending: it reads a count
   and ends): a few parallel bracketing rounds over each row, then a draw among the kept tokens; rows even
   that leaves open are drawn by the exact sequential path of sampling_threshold.py, in the same launch.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritium.autotune import next_pow2, tuned
from tritium.kernels.gumbel import NEG, exp_fast, first_block, noisy_scores
from tritium.kernels.sampling_bracket import COUNT_SLOTS, draw_pending, reset_brackets
from tritium.kernels.sampling_finish import _filter_finish_kernel
from tritium.kernels.sampling_threshold import row_params

# Tokens per program: CHUNK (a multiple of BLOCK, <= FILTER_CHUNK), fixed by V alone, so sums and candidate
# sets, and with them every draw, do not depend on the batch or the config.
# AHEAD: blocks in flight beyond the one worked on (fp32 rows move 2x the bytes of bf16 per token: the
# 1-ahead candidate pass ran at 54.7 us against 47.7 for the plain pass on an H200, bf16 at 47.4 vs 46.1).
FILTER_CONFIGS = [triton.Config({"AHEAD": 1}, num_warps=4), triton.Config({"AHEAD": 1}, num_warps=8),
                  triton.Config({"AHEAD": 2}, num_warps=4)]
FILTER_BLOCK = 1024  # lanes of a program: [BLOCK // 4, 4] tiles (2048 lanes: 1.4x slower on an H200)
# Longer chunks mean fewer program epilogues and fewer candidate slots for the finishing kernel, but fewer
# programs for small batches. fp32 top-p on an H200 (us, batch 1 / 64 / 256 / 512, no row pending): 16384:
# 13.5 / 25.0 / 68.8 / 129.2; 32768: 14.9 / 22.5 / 62.0 / 115.0; 65536: 19.5 / 26.3 / 57.5 / 107.3.
FILTER_CHUNK = 32768
CAPC = 128  # candidates kept per chunk (lane maxima above the chunk floor: ~sqrt(2 * BLOCK) expected)
DMAX = 16.0  # widest row window below the max: exp(-16) ~ 1e-7 of the max probability
NWIN = 512  # most candidates of a row the finishing kernel sorts (a power of two)
NRSCHED = 17  # row windows tried: 0, DMAX * 2**(-15/4), ..., DMAX * 2**(-1/4), DMAX
NSMALL = 64  # a window this small is walked and drawn on a narrow tile (sorting 512 slots costs ~3 us)


@triton.jit
def _ordered(x):
    """fp32 -> int32 whose signed order is the float order (for packed max keys)."""
    b = x.to(tl.int32, bitcast=True)
    return b ^ ((b >> 31) & 0x7FFFFFFF)


@triton.jit
def _unordered(o):
    return (o ^ ((o >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)


@triton.jit
def _lane_block(x, off, tile, end, inv_t, sampled, seed, step, best_s, best_o, m1, o1, m2, s1, mn,
                MASKED: tl.constexpr, G: tl.constexpr):
    # one [G, 4] block x of logits, tokens off + tile, into per-lane state: the noisy winner (best_s at block
    # offset best_o), the largest z (m1 at block offset o1) and the largest of the lane's other z (m2), and
    # s1 = sum exp(z - m1) with one exp per token: exp(-|z - m1|) serves both cases
    z = x.to(tl.float32) * inv_t
    if MASKED:
        z = tl.where(tile < end - off, z, float("-inf"))
    if sampled:
        sc = noisy_scores(z, seed, step, (off // 4 + tl.arange(0, G))[:, None], tl.arange(0, 4)[None, :])
    else:
        sc = z
    better = sc > best_s
    best_s = tl.where(better, sc, best_s)
    best_o = tl.where(better, off, best_o)
    gt = z > m1
    e = exp_fast(-tl.abs(z - m1))
    s1 = tl.where(gt, s1 * e + 1.0, s1 + e)
    m2 = tl.maximum(m2, tl.minimum(m1, z))
    o1 = tl.where(gt, off, o1)
    m1 = tl.maximum(m1, z)
    mn = tl.minimum(mn, tl.where(z > NEG, z, float("inf")))  # the smallest finite z (sampling_bracket)
    return best_s, best_o, m1, o1, m2, s1, mn


# variants must not depend on step sizes (autotune.SPECIALIZATION)
@triton.jit(do_not_specialize_on_alignment=["temp_ptr", "seed_ptr", "step_ptr", "topk_ptr", "topp_ptr", "minp_ptr"])
def _filter_partial_kernel(
    logits_ptr,  # [B, V] fp32/bf16/fp16, last dim contiguous
    stride_row,  # elements between rows
    temp_ptr,  # [B] fp32
    seed_ptr,  # [B] int64
    step_ptr,  # [B] int64
    topk_ptr, topp_ptr, minp_ptr,  # [B] int32, fp32, fp32 (dummies when HAS_* is off)
    part_f_ptr,  # [B, C, 5] fp32 out: best score, max z, sum exp(z - max), floor F_c, min finite z
    part_i_ptr,  # [B, C, 2] int32 out: best token, number of candidates
    cand_z_ptr,  # [B, C, CAPC] fp32 out: candidate z
    cand_i_ptr,  # [B, C, CAPC] int32 out: candidate token
    counts_ptr,  # [NCOUNT] int32 out: zeroed (sampling_bracket's pending-row counts; this launch precedes all)
    V,  # vocabulary size
    HAS_K: tl.constexpr, HAS_P: tl.constexpr, HAS_MINP: tl.constexpr,
    CAPC: tl.constexpr, NCOUNT: tl.constexpr,
    CHUNK: tl.constexpr,  # tokens per program, a multiple of BLOCK
    BLOCK: tl.constexpr,  # lanes, a power of two >= 4
    AHEAD: tl.constexpr,  # blocks fetched ahead: 1 or 2 (config)
):
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    slot = row * tl.num_programs(1) + c
    if (row == 0) & (c == 0):
        tl.store(counts_ptr + tl.arange(0, NCOUNT), tl.zeros([NCOUNT], tl.int32))
    G: tl.constexpr = BLOCK // 4
    t, k, p, mp = row_params(temp_ptr, topk_ptr, topp_ptr, minp_ptr, row, HAS_K, HAS_P, HAS_MINP)
    inv_t = 1.0 / tl.where(t > 0, t, 1.0)
    # The chunk winner serves unfiltered rows only: filtered rows draw later, among their kept tokens
    # (their noise recomputed there), so they skip the Philox noise here.
    sampled = (t > 0) & (k <= 0) & (p >= 1.0) & (mp <= 0)
    seed = tl.load(seed_ptr + row)
    step = tl.load(step_ptr + row)
    tile = tl.arange(0, G)[:, None] * 4 + tl.arange(0, 4)[None, :]
    row_ptr = logits_ptr + row * stride_row
    best_s = tl.full([G, 4], float("-inf"), tl.float32)
    best_o = tl.zeros([G, 4], tl.int32)
    m1 = tl.full([G, 4], NEG, tl.float32)
    o1 = tl.zeros([G, 4], tl.int32)
    m2 = tl.full([G, 4], NEG, tl.float32)
    s1 = tl.zeros([G, 4], tl.float32)
    mn = tl.full([G, 4], float("inf"), tl.float32)
    start = c * CHUNK
    end = tl.minimum(start + CHUNK, V)
    full_end = start + (end - start) // BLOCK * BLOCK
    # the next AHEAD blocks are fetched while one is worked on (fetches past the last block repeat it)
    x = first_block(row_ptr, start, end, BLOCK)
    if AHEAD == 2:
        x1 = tl.load(row_ptr + start + BLOCK + tile, mask=tile < full_end - start - BLOCK, other=0.0)
    for off in range(start, full_end, BLOCK):
        if AHEAD == 2:
            x_next = x1
            x1 = tl.load(row_ptr + tl.minimum(off + 2 * BLOCK, full_end - BLOCK) + tile)
        else:
            x_next = tl.load(row_ptr + tl.minimum(off + BLOCK, full_end - BLOCK) + tile)
        best_s, best_o, m1, o1, m2, s1, mn = _lane_block(x, off, tile, end, inv_t, sampled, seed, step,
                                                         best_s, best_o, m1, o1, m2, s1, mn, False, G)
        x = x_next
    for off in range(full_end, end, BLOCK):
        x = tl.load(row_ptr + off + tile, mask=tile < end - off, other=0.0)
        best_s, best_o, m1, o1, m2, s1, mn = _lane_block(x, off, tile, end, inv_t, sampled, seed, step,
                                                         best_s, best_o, m1, o1, m2, s1, mn, True, G)
    # the best (score, lowest token) in one reduction of packed (ordered score, inverted token) keys
    key = tl.max((_ordered(best_s).to(tl.int64) << 32) | (2147483647 - (best_o + tile)))
    big = tl.max(m1)
    # candidates: the lane maxima above every lane's second value, so every token of the chunk with
    # z > floor is one (too many, e.g. ties at the top: none, and floor +inf)
    floor = tl.max(m2)
    sel = m1 > floor
    n_sel = tl.sum(sel.to(tl.int32))
    fits = n_sel <= CAPC
    pos = tl.reshape(tl.cumsum(tl.reshape(sel.to(tl.int32), [BLOCK]), 0), [G, 4]) - 1
    tl.store(cand_z_ptr + slot * CAPC + pos, m1, mask=sel & fits)
    tl.store(cand_i_ptr + slot * CAPC + pos, o1 + tile, mask=sel & fits)
    out = part_f_ptr + slot * 5
    tl.store(out, _unordered((key >> 32).to(tl.int32)))
    tl.store(out + 1, big)
    tl.store(out + 2, tl.sum(s1 * tl.exp(m1 - big)))
    tl.store(out + 3, tl.where(fits, floor, float("inf")))
    tl.store(out + 4, tl.min(mn))
    tl.store(part_i_ptr + slot * 2, 2147483647 - (key & 0xFFFFFFFF).to(tl.int32))
    tl.store(part_i_ptr + slot * 2 + 1, tl.where(fits, n_sel, 0))


_FILTER_PARTIAL = tuned(_filter_partial_kernel, FILTER_CONFIGS, key=["V"], name="filter_partial")


def filter_tiling(V: int) -> tuple[int, int, int]:
    """(BLOCK, CHUNK, candidate slots per chunk) of the candidate pass for vocabulary V."""
    block = min(FILTER_BLOCK, max(4, next_pow2(V)))
    chunk = min(max(FILTER_CHUNK // block, 1), -(-V // block)) * block
    return block, chunk, min(CAPC, block)


def sample_filtered(logits, temperature, seeds, offsets, top_k, top_p, min_p, out, logprobs_out, config=None,
                    state=None, force_general=False):
    """Launch the candidate pass, the finishing kernel and, for rows it leaves pending, sampling_bracket's
    kernels (inputs already validated by sampling.sample). `state`, if given ([B] int32), receives which path
    drew each row: 0 the candidate window, 1 the bracket rounds, 2 the sequential draw (general_row). force_general
    (tests) makes every row pending."""
    B, V = logits.shape
    dev = logits.device
    block, chunk, capc = filter_tiling(V)
    C = -(-V // chunk)
    part_f = torch.empty((B, C, 5), dtype=torch.float32, device=dev)
    part_i = torch.empty((B, C, 2), dtype=torch.int32, device=dev)
    cand_z = torch.empty((B, C, capc), dtype=torch.float32, device=dev)
    cand_i = torch.empty((B, C, capc), dtype=torch.int32, device=dev)
    ncand = next_pow2(C * capc)
    nwin = min(NWIN, ncand)
    win_z = torch.empty((B, nwin), dtype=torch.float32, device=dev)
    win_i = torch.empty((B, nwin), dtype=torch.int32, device=dev)
    row_f = torch.empty((B, 3), dtype=torch.float32, device=dev)
    bf = torch.empty((2, B, 4), dtype=torch.float32, device=dev)
    bi = torch.empty((2, B, 4), dtype=torch.int32, device=dev)
    counts = torch.empty(COUNT_SLOTS, dtype=torch.int32, device=dev)
    state = torch.empty(B, dtype=torch.int32, device=dev) if state is None else state
    has = dict(HAS_K=top_k is not None, HAS_P=top_p is not None, HAS_MINP=min_p is not None)
    flags = dict(**has, LOGPROBS=logprobs_out is not None)
    dummy = temperature
    filt = (top_k if top_k is not None else dummy, top_p if top_p is not None else dummy,
            min_p if min_p is not None else dummy)
    _FILTER_PARTIAL((B, C), logits, logits.stride(0), temperature, seeds, offsets, *filt, part_f, part_i, cand_z,
                    cand_i, counts, V, **has, CAPC=capc, NCOUNT=COUNT_SLOTS, CHUNK=chunk, BLOCK=block, config=config)
    lp = logprobs_out if logprobs_out is not None else row_f
    _filter_finish_kernel[(B,)](logits, logits.stride(0), part_f, part_i, cand_z, cand_i, win_z, win_i,
                                temperature, seeds, offsets, *filt, out, lp, row_f, state, bf, bi, counts, V, C,
                                **flags, CAPC=capc, CPAD=next_pow2(C), NCAND=ncand, NWIN=nwin, DMAX=DMAX,
                                NRSCHED=NRSCHED, SBINS=next_pow2(NRSCHED + 1), NSMALL=min(NSMALL, nwin), num_warps=8)
    if force_general:
        reset_brackets(state, row_f, bf, bi, counts)
    draw_pending(logits, temperature, seeds, offsets, filt, flags, row_f, state, bf, bi, counts, win_z, out, lp)
    return out
