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
2. _filter_finish_kernel, grid (B,): merges the chunks (max, sum exp; the unfiltered winner for rows
   without filters) and gathers the row's window: the candidates with z >= max - D, D the widest of a
   schedule with at most NWIN of them (all widths counted at once: a histogram of the first width each
   candidate passes), so every token above the window floor is in it. Sorts the window (count and mass at
   or above each value: its rank and a cumulative sum; on an NSMALL-wide tile when it is that small) to find
   v* (sampling_threshold.settle_window). If the kept set lies above
   the floor (the usual case: peaked LLM distributions), draws among the kept window tokens, their noise
   recomputed from the token ids; otherwise marks the row pending.
3. sampling_bracket.py: pending rows only (others return at once): a few parallel bracketing rounds over
   the row, then a draw among the kept tokens; rows even that leaves open go to the exact sequential
   kernel of sampling_threshold.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritium.autotune import next_pow2, tuned
from tritium.kernels.gumbel import NEG, exp_fast, noisy_scores
from tritium.kernels.sampling_bracket import COUNT_SLOTS, draw_pending, init_bracket, reset_brackets
from tritium.kernels.sampling_threshold import predicate_bounds, row_params, settle_window

# Tokens per program: CHUNK (a multiple of BLOCK, <= FILTER_CHUNK), fixed by V alone, so sums and candidate
# sets, and with them every draw, do not depend on the batch or the config.
FILTER_CONFIGS = [triton.Config({}, num_warps=4), triton.Config({}, num_warps=8)]
FILTER_BLOCK = 1024  # lanes of a program: [BLOCK // 4, 4] tiles (2048 lanes: 1.4x slower on an H200)
FILTER_CHUNK = 16384
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


@triton.jit
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
    x = tl.load(row_ptr + start + tile, mask=tile < full_end - start, other=0.0)
    for off in range(start, full_end, BLOCK):
        # the next block is fetched while this one is worked on (the last fetch repeats the last block)
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


@triton.jit
def _filter_finish_kernel(
    logits_ptr,  # [B, V] (the winner's logit, for logprobs of unfiltered rows)
    stride_row,
    part_f_ptr,  # [B, C, 5] fp32 from _filter_partial_kernel
    part_i_ptr,  # [B, C, 2] int32
    cand_z_ptr,  # [B, C, CAPC] fp32
    cand_i_ptr,  # [B, C, CAPC] int32
    win_z_ptr,  # [B, NWIN] fp32 scratch: the row's window of candidates
    win_i_ptr,  # [B, NWIN] int32 scratch
    temp_ptr, seed_ptr, step_ptr,  # [B] fp32, int64, int64
    topk_ptr, topp_ptr, minp_ptr,  # [B] int32, fp32, fp32 (dummies when HAS_* is off)
    out_ptr,  # [B] int64 out: token (finished rows)
    lp_ptr,  # [B] fp32 out: logprob (finished rows, if LOGPROBS)
    row_f_ptr,  # [B, 3] fp32 out: max z, sum exp(z - max), min finite z (for sampling_bracket)
    state_ptr,  # [B] int32 out: 0 done, 1 pending
    bf_ptr, bi_ptr,  # [2, B, 4] fp32 / int32 out: sampling_bracket's first state (both buffers' phase)
    counts_ptr,  # [NCOUNT] int32: counts_ptr[0] += 1 for each row left pending (atomic)
    V, C,
    HAS_K: tl.constexpr, HAS_P: tl.constexpr, HAS_MINP: tl.constexpr, LOGPROBS: tl.constexpr,
    CAPC: tl.constexpr, CPAD: tl.constexpr, NCAND: tl.constexpr,  # CPAD >= C, NCAND >= C * CAPC
    NWIN: tl.constexpr, DMAX: tl.constexpr, NRSCHED: tl.constexpr,
    SBINS: tl.constexpr,  # next_pow2(NRSCHED + 1): histogram bins of the schedule steps
    NSMALL: tl.constexpr,  # windows of at most NSMALL candidates are sorted on a tile that wide
):
    row = tl.program_id(0).to(tl.int64)
    # everything the row needs from memory is fetched at once (slots past a chunk's count too: in bounds,
    # masked below), so the program waits on memory once before its window is gathered
    t, k, p, mp = row_params(temp_ptr, topk_ptr, topp_ptr, minp_ptr, row, HAS_K, HAS_P, HAS_MINP)
    seed = tl.load(seed_ptr + row)
    step = tl.load(step_ptr + row)
    c = tl.arange(0, CPAD)
    cm = c < C
    part = part_f_ptr + (row * C + c) * 5
    m = tl.load(part + 1, mask=cm, other=NEG)
    sums = tl.load(part + 2, mask=cm, other=0.0)
    floors = tl.load(part + 3, mask=cm, other=float("-inf"))
    low = tl.min(tl.load(part + 4, mask=cm, other=float("inf")))
    s = tl.arange(0, NCAND)
    ch = s // CAPC
    slot = (row * C + ch) * CAPC + s % CAPC
    n_cand = tl.load(part_i_ptr + (row * C + ch) * 2 + 1, mask=ch < C, other=0)
    cz_all = tl.load(cand_z_ptr + slot, mask=ch < C, other=NEG)
    ci_all = tl.load(cand_i_ptr + slot, mask=ch < C, other=0)
    big = tl.max(m)
    total = tl.sum(sums * tl.exp(m - big))
    tl.store(row_f_ptr + row * 3, big)
    tl.store(row_f_ptr + row * 3 + 1, total)
    tl.store(row_f_ptr + row * 3 + 2, low)
    # no filter on this row, or a greedy row without logprobs (the argmax is always kept): the plain winner
    if ((k <= 0) & (p >= 1.0) & (mp <= 0)) | ((t <= 0) & (not LOGPROBS)):
        sc = tl.load(part, mask=cm, other=float("-inf"))
        pick = tl.minimum(tl.min(tl.where(cm & (sc == tl.max(sc)), c, CPAD)), C - 1)
        tok = tl.load(part_i_ptr + (row * C + pick) * 2)
        tl.store(out_ptr + row, tok.to(tl.int64))
        if LOGPROBS:
            z = tl.load(logits_ptr + row * stride_row + tok).to(tl.float32) / tl.where(t > 0, t, 1.0)
            tl.store(lp_ptr + row, z - big - tl.log(total))
        tl.store(state_ptr + row, 0)
        init_bracket(bf_ptr, bi_ptr, row, tl.num_programs(0), True, big)
    else:
        # candidates of all chunks; the row's window: the widest z >= max - D with at most NWIN of them
        valid = (ch < C) & (s % CAPC < n_cand)
        cz = tl.where(valid, cz_all, NEG)
        # every token with z > floor is a candidate (chunk floors), and with z >= w_floor in the window
        floor = tl.max(floors)
        w_floor = tl.full([], float("-inf"), tl.float32)
        if NCAND > NWIN:
            # count(cz >= max - D) for every D of the schedule at once: a candidate's step is the first D it
            # passes (NRSCHED: none), and the counts are the cumulative histogram of the steps
            first_d = tl.zeros([NCAND], tl.int32)
            for i in tl.static_range(NRSCHED):
                first_d += (cz < big - _sched(i, DMAX, NRSCHED)).to(tl.int32)
            hist = tl.histogram(tl.where(valid, first_d, NRSCHED), SBINS)
            fits = (tl.cumsum(hist, 0) <= NWIN) & (tl.arange(0, SBINS) < NRSCHED)
            pick = tl.sum(fits.to(tl.int32)) - 1  # the widest D with at most NWIN candidates (-1: none)
            d_sel = tl.full([], -1.0, tl.float32)
            for i in tl.static_range(NRSCHED):
                d_sel = tl.where(pick == i, _sched(i, DMAX, NRSCHED), d_sel)
            w_floor = tl.where(d_sel >= 0, big - d_sel, float("inf"))
        sel = valid & (cz >= w_floor)
        pos = tl.cumsum(sel.to(tl.int32), 0) - 1
        tl.store(win_z_ptr + row * NWIN + pos, cz, mask=sel)
        tl.store(win_i_ptr + row * NWIN + pos, ci_all, mask=sel)
        tl.debug_barrier()  # the window was written by other threads of this program
        n_win = tl.sum(sel.to(tl.int32))
        k_on, mass_on = predicate_bounds(k, p, V, total)
        wz_ptr = win_z_ptr + row * NWIN
        wi_ptr = win_i_ptr + row * NWIN
        if n_win <= NSMALL:  # the usual peaked row: a few candidates, sorted and drawn on a narrow tile
            done = settle_window(wz_ptr, wi_ptr, n_win, big, k_on, mass_on, k, p, mp, t, seed, step, row, floor,
                                 w_floor, out_ptr, lp_ptr, LOGPROBS, NSMALL)
        else:
            done = settle_window(wz_ptr, wi_ptr, n_win, big, k_on, mass_on, k, p, mp, t, seed, step, row, floor,
                                 w_floor, out_ptr, lp_ptr, LOGPROBS, NWIN)
        tl.store(state_ptr + row, tl.where(done, 0, 1))
        init_bracket(bf_ptr, bi_ptr, row, tl.num_programs(0), done, low)
        tl.atomic_add(counts_ptr, tl.where(done, 0, 1), sem="relaxed")  # (read after this launch)


@triton.jit
def _sched(i: tl.constexpr, DMAX: tl.constexpr, NRSCHED: tl.constexpr):
    # the i-th row window width of the schedule: 0, then DMAX * 2**(-j/4) for j = NRSCHED - 2 .. 0
    return 0.0 if i == 0 else DMAX * 0.5 ** ((NRSCHED - 1 - i) / 4)


_FILTER_PARTIAL = tuned(_filter_partial_kernel, FILTER_CONFIGS, key=["V"])


def filter_tiling(V: int) -> tuple[int, int, int]:
    """(BLOCK, CHUNK, candidate slots per chunk) of the candidate pass for vocabulary V."""
    block = min(FILTER_BLOCK, max(4, next_pow2(V)))
    chunk = min(max(FILTER_CHUNK // block, 1), -(-V // block)) * block
    return block, chunk, min(CAPC, block)


def sample_filtered(logits, temperature, seeds, offsets, top_k, top_p, min_p, out, logprobs_out, config=None,
                    state=None, force_general=False):
    """Launch the candidate pass, the finishing kernel and, for rows it leaves pending, sampling_bracket's
    kernels (inputs already validated by sampling.sample). `state`, if given ([B] int32), receives which path
    drew each row: 0 the candidate window, 1 the bracket rounds, 2 the sequential kernel. force_general
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
