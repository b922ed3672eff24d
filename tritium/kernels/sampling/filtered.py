"""3. Sampling with top-k / top-p / min-p, the fast path: exact kept sets (semantics in exact.py) without
sorting the vocabulary, for the rows whose kept set lies among a few candidates (the usual, peaked LLM row);
the others are left pending for bracket.py.

Two launches (fixed grids, no host sync):
1. _filter_partial_kernel, grid (B, C): one CHUNK of the row per program, read once, over BLOCK lanes.
   Each lane keeps its winner (noisy for unfiltered sampled rows), its largest z and its second largest;
   the program writes the chunk's winner (used by rows without filters), (max, sum exp) of z and its
   candidates: the lane maxima above the largest lane second value F_c, so every token of the chunk with
   z > F_c is a candidate (about sqrt(BLOCK) of them: the top tokens rarely share a lane). CandidateChunks.
2. _filter_finish_kernel, grid (B,): merges the chunks (PendingRows.row_stats; the unfiltered winner for rows
   without filters) and gathers the row's window: the candidates with z >= max - D, D the widest of a schedule
   with at most NWIN of them (all widths counted at once: a histogram of the first width each candidate passes), so
   every token above the window floor is in it. Sorts the window (count and mass at or above each value: its
   rank and a cumulative sum) to find v* (settle_window). If the kept set lies above the floor, draws among
   the kept window tokens, their noise recomputed from the token ids; otherwise leaves the row pending with
   a first bracket (PendingRows), for bracket.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from tritium.autotune import next_pow2, tuned
from tritium.kernels.sampling.exact import (COUNT_SLOTS, PATH_BRACKET, PATH_WINDOW, ROW_COLS, ROW_MAX, ROW_MIN,
                                            ROW_SUMEXP, PendingRows, init_bracket, predicate_bounds, row_params,
                                            threshold, walk_values)
from tritium.kernels.sampling.plain import NEG, best_chunk, cdiv, exp_fast, first_block, noisy_scores

# Tokens per program: CHUNK (a multiple of BLOCK, <= FILTER_CHUNK), fixed by V alone, so sums and candidate
# sets, and with them every draw, do not depend on the batch or the config.
# AHEAD: blocks in flight beyond the one worked on (fp32 rows move twice the bytes of bf16 per token).
FILTER_CONFIGS = [triton.Config({"AHEAD": 1}, num_warps=4), triton.Config({"AHEAD": 1}, num_warps=8),
                  triton.Config({"AHEAD": 2}, num_warps=4)]
FILTER_BLOCK = 1024  # lanes of a program: [BLOCK // 4, 4] tiles
# Longer chunks mean fewer program epilogues and fewer candidate slots for the finishing kernel, but fewer
# programs for small batches (measurements: benchmarks/results/h200/README.md).
FILTER_CHUNK = 32768
CAPC = 128  # candidates kept per chunk (lane maxima above the chunk floor: ~sqrt(2 * BLOCK) expected)
DMAX = 16.0  # widest row window below the max: exp(-16) ~ 1e-7 of the max probability
NWIN = 512  # most candidates of a row the finishing kernel sorts (a power of two)
NRSCHED = 17  # row windows tried: 0, DMAX * 2**(-15/4), ..., DMAX * 2**(-1/4), DMAX
NSMALL = 64  # a window this small is walked and drawn on a narrow tile (sorting all NWIN slots costs more)

# CandidateChunks.stats columns
CH_BEST = tl.constexpr(0)  # the chunk winner's score (unfiltered rows)
CH_MAX = tl.constexpr(1)  # max z
CH_SUMEXP = tl.constexpr(2)  # sum exp(z - max z)
CH_FLOOR = tl.constexpr(3)  # F_c: every token with z > F_c is a candidate (+inf: the candidates did not fit)
CH_MIN = tl.constexpr(4)  # the smallest finite z
CH_COLS = tl.constexpr(5)
# CandidateChunks.ints columns
CH_TOKEN = tl.constexpr(0)  # the chunk winner (unfiltered rows)
CH_NCAND = tl.constexpr(1)  # candidates written
CH_INT_COLS = tl.constexpr(2)


@dataclass
class CandidateChunks:
    """What _filter_partial_kernel leaves per (row, chunk) for _filter_finish_kernel: stats [B, C, CH_COLS]
    fp32 (columns CH_*), ints [B, C, CH_INT_COLS] int32 (CH_TOKEN, CH_NCAND), and the candidates' z and token
    ids z, token [B, C, CAPC] fp32 / int32 (the first CH_NCAND slots valid)."""
    stats: torch.Tensor
    ints: torch.Tensor
    z: torch.Tensor
    token: torch.Tensor

    @classmethod
    def empty(cls, B: int, C: int, capc: int, device) -> CandidateChunks:
        f32, i32 = torch.float32, torch.int32
        return cls(torch.empty((B, C, CH_COLS.value), dtype=f32, device=device),
                   torch.empty((B, C, CH_INT_COLS.value), dtype=i32, device=device),
                   torch.empty((B, C, capc), dtype=f32, device=device),
                   torch.empty((B, C, capc), dtype=i32, device=device))


@triton.jit
def settle_window(wz_ptr, wi_ptr, n_win, big, k_on, mass_on, k, p, mp, t, seed, step, row, floor, w_floor,
                  out_ptr, lp_ptr, LOGPROBS: tl.constexpr, W: tl.constexpr):
    """v* from the n_win <= W window values (sorted), then, if the kept set lies above the floors, the draw
    among the kept window tokens (their noise recomputed from the token ids). Returns whether it settled."""
    w = tl.arange(0, W)
    wv = w < n_win
    wz = tl.load(wz_ptr + w, mask=wv, other=NEG)
    wi = tl.load(wi_ptr + w, mask=wv, other=0)
    vstar = walk_values(wz, n_win, 0, 0.0, big, k_on, mass_on, W)  # counts are exact for values >= floor
    thr = threshold(vstar, k, p, mp, big)
    # v* computed below the floor may be too low, but then the true one is below the floor too
    done = (thr > floor) & (thr >= w_floor)
    kept = wv & (wz >= thr)
    noisy = noisy_scores(wz, seed, step, wi // 4, wi % 4)
    score = tl.where(kept, tl.where(t > 0, noisy, wz), float("-inf"))
    ftok = tl.min(tl.where(kept & (score == tl.max(score)), wi, 2147483647))
    tl.store(out_ptr + row, ftok.to(tl.int64), mask=done)
    if LOGPROBS:
        fz = tl.max(tl.where(wi == ftok, wz, NEG))
        e = tl.where(kept, tl.exp(wz - big), 0.0)
        tl.store(lp_ptr + row, fz - big - tl.log(tl.sum(e)), mask=done)
    return done


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
    mn = tl.minimum(mn, tl.where(z > NEG, z, float("inf")))  # the smallest finite z (the bracket's first lo)
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
    ch_stats_ptr,  # [B, C, CH_COLS] fp32 out: CandidateChunks.stats
    ch_ints_ptr,  # [B, C, CH_INT_COLS] int32 out: CandidateChunks.ints
    cand_z_ptr,  # [B, C, CAPC] fp32 out: candidate z
    cand_i_ptr,  # [B, C, CAPC] int32 out: candidate token
    counts_ptr,  # [NCOUNT] int32 out: zeroed (PendingRows.counts; this launch precedes all that use them)
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
    out = ch_stats_ptr + slot * CH_COLS
    tl.store(out + CH_BEST, _unordered((key >> 32).to(tl.int32)))
    tl.store(out + CH_MAX, big)
    tl.store(out + CH_SUMEXP, tl.sum(s1 * tl.exp(m1 - big)))
    tl.store(out + CH_FLOOR, tl.where(fits, floor, float("inf")))
    tl.store(out + CH_MIN, tl.min(mn))
    tl.store(ch_ints_ptr + slot * CH_INT_COLS + CH_TOKEN, 2147483647 - (key & 0xFFFFFFFF).to(tl.int32))
    tl.store(ch_ints_ptr + slot * CH_INT_COLS + CH_NCAND, tl.where(fits, n_sel, 0))


@triton.jit
def _sched(i: tl.constexpr, DMAX: tl.constexpr, NRSCHED: tl.constexpr):
    # the i-th row window width of the schedule: 0, then DMAX * 2**(-j/4) for j = NRSCHED - 2 .. 0
    return 0.0 if i == 0 else DMAX * 0.5 ** ((NRSCHED - 1 - i) / 4)


# variants must not depend on step sizes (autotune.SPECIALIZATION)
@triton.jit(do_not_specialize_on_alignment=["temp_ptr", "seed_ptr", "step_ptr", "topk_ptr", "topp_ptr", "minp_ptr"])
def _filter_finish_kernel(
    logits_ptr,  # [B, V] (the winner's logit, for logprobs of unfiltered rows)
    stride_row,
    ch_stats_ptr,  # [B, C, CH_COLS] fp32: CandidateChunks from _filter_partial_kernel
    ch_ints_ptr,  # [B, C, CH_INT_COLS] int32
    cand_z_ptr,  # [B, C, CAPC] fp32
    cand_i_ptr,  # [B, C, CAPC] int32
    win_z_ptr,  # [B, NWIN] fp32 out: the row's window of candidates (PendingRows.window_z)
    win_i_ptr,  # [B, NWIN] int32 out
    temp_ptr, seed_ptr, step_ptr,  # [B] fp32, int64, int64
    topk_ptr, topp_ptr, minp_ptr,  # [B] int32, fp32, fp32 (dummies when HAS_* is off)
    out_ptr,  # [B] int64 out: token (finished rows)
    lp_ptr,  # [B] fp32 out: logprob (finished rows, if LOGPROBS)
    row_f_ptr,  # [B, ROW_COLS] fp32 out: PendingRows.row_stats
    path_ptr,  # [B] int32 out: PATH_WINDOW, or PATH_BRACKET for pending rows
    bf_ptr, bi_ptr,  # [2, B, BR_COLS] fp32 / int32 out: the first bracket state (init_bracket)
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
    part = ch_stats_ptr + (row * C + c) * CH_COLS
    m = tl.load(part + CH_MAX, mask=cm, other=NEG)
    sums = tl.load(part + CH_SUMEXP, mask=cm, other=0.0)
    floors = tl.load(part + CH_FLOOR, mask=cm, other=float("-inf"))
    low = tl.min(tl.load(part + CH_MIN, mask=cm, other=float("inf")))
    s = tl.arange(0, NCAND)
    ch = s // CAPC
    slot = (row * C + ch) * CAPC + s % CAPC
    n_cand = tl.load(ch_ints_ptr + (row * C + ch) * CH_INT_COLS + CH_NCAND, mask=ch < C, other=0)
    cz_all = tl.load(cand_z_ptr + slot, mask=ch < C, other=NEG)
    ci_all = tl.load(cand_i_ptr + slot, mask=ch < C, other=0)
    big = tl.max(m)
    total = tl.sum(sums * tl.exp(m - big))
    tl.store(row_f_ptr + row * ROW_COLS + ROW_MAX, big)
    tl.store(row_f_ptr + row * ROW_COLS + ROW_SUMEXP, total)
    tl.store(row_f_ptr + row * ROW_COLS + ROW_MIN, low)
    # no filter on this row, or a greedy row without logprobs (the argmax is always kept): the plain winner
    if ((k <= 0) & (p >= 1.0) & (mp <= 0)) | ((t <= 0) & (not LOGPROBS)):
        pick = best_chunk(tl.load(part + CH_BEST, mask=cm, other=float("-inf")), c, C, CPAD)
        tok = tl.load(ch_ints_ptr + (row * C + pick) * CH_INT_COLS + CH_TOKEN)
        tl.store(out_ptr + row, tok.to(tl.int64))
        if LOGPROBS:
            z = tl.load(logits_ptr + row * stride_row + tok).to(tl.float32) / tl.where(t > 0, t, 1.0)
            tl.store(lp_ptr + row, z - big - tl.log(total))
        tl.store(path_ptr + row, PATH_WINDOW)
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
        tl.store(path_ptr + row, tl.where(done, PATH_WINDOW, PATH_BRACKET))
        init_bracket(bf_ptr, bi_ptr, row, tl.num_programs(0), done, low)
        tl.atomic_add(counts_ptr, tl.where(done, 0, 1), sem="relaxed")  # (read after this launch)


_FILTER_PARTIAL = tuned(_filter_partial_kernel, FILTER_CONFIGS, key=["V"], name="filter_partial")


def filter_tiling(V: int) -> tuple[int, int, int]:
    """(BLOCK, CHUNK, candidate slots per chunk) of the candidate pass for vocabulary V."""
    block = min(FILTER_BLOCK, max(4, next_pow2(V)))
    chunk = min(max(FILTER_CHUNK // block, 1), cdiv(V, block)) * block
    return block, chunk, min(CAPC, block)


def sample_candidates(logits, temperature, seeds, offsets, filt, flags, out, lp, path=None,
                      config: triton.Config | None = None) -> PendingRows:
    """The candidate pass and the finishing kernel (inputs validated by sample()): draws the rows the window
    settles into out (and lp: [B] fp32 logprobs, or any fp32 dummy without LOGPROBS) and returns the
    PendingRows for bracket.draw_pending. filt, flags: exact.filter_args'.
    path ([B] int32), if given, receives PendingRows.path."""
    B, V = logits.shape
    dev = logits.device
    block, chunk, capc = filter_tiling(V)
    C = cdiv(V, chunk)
    cands = CandidateChunks.empty(B, C, capc, dev)
    ncand = next_pow2(C * capc)
    nwin = min(NWIN, ncand)
    pending = PendingRows.empty(B, nwin, dev, path)
    has = {name: flags[name] for name in ("HAS_K", "HAS_P", "HAS_MINP")}
    _FILTER_PARTIAL((B, C), logits, logits.stride(0), temperature, seeds, offsets, *filt, cands.stats, cands.ints,
                    cands.z, cands.token, pending.counts, V, **has, CAPC=capc, NCOUNT=COUNT_SLOTS, CHUNK=chunk,
                    BLOCK=block, config=config)
    _filter_finish_kernel[(B,)](logits, logits.stride(0), cands.stats, cands.ints, cands.z, cands.token,
                                pending.window_z, pending.window_token, temperature, seeds, offsets, *filt, out,
                                pending.row_stats if lp is None else lp, pending.row_stats, pending.path,
                                pending.bracket_f, pending.bracket_i, pending.counts, V, C, **flags, CAPC=capc,
                                CPAD=next_pow2(C), NCAND=ncand, NWIN=nwin, DMAX=DMAX, NRSCHED=NRSCHED,
                                SBINS=next_pow2(NRSCHED + 1), NSMALL=min(NSMALL, nwin), num_warps=8)
    return pending
