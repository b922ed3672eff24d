"""The finishing kernel of the candidate path (stage 2 of sampling_filter.py's docstring), grid (B,): merges a
row's chunk partials, gathers its candidate window, finds v* there and draws when the kept set lies inside
the window; otherwise the row is left pending for sampling_bracket.py (its first bracket state and the count
of pending rows written here).
"""
from __future__ import annotations

import triton
import triton.language as tl

from tritium.kernels.gumbel import NEG
from tritium.kernels.sampling_bracket import init_bracket
from tritium.kernels.sampling_threshold import predicate_bounds, row_params, settle_window


# variants must not depend on step sizes (autotune.SPECIALIZATION)
@triton.jit(do_not_specialize_on_alignment=["temp_ptr", "seed_ptr", "step_ptr", "topk_ptr", "topp_ptr", "minp_ptr"])
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
