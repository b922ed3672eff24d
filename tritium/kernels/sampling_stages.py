"""The work items of sampling_bracket.py's stages: one bracketing round on G chunks of a pending row
(round_item), and the draw among a row's kept tokens on G chunks (draw_item). Their math is in
sampling_bracket's docstring.
"""
from __future__ import annotations

import triton
import triton.language as tl

from tritium.kernels.gumbel import first_block, scan_chunk
from tritium.kernels.sampling_threshold import predicate_bounds, row_params, threshold, walk_window


@triton.jit
def _probes(lo, hi, big, j, NP: tl.constexpr):
    # probes j of NP spread from lo to top = min(hi, max z), probe 0 exactly lo and probe NP - 1 exactly top
    top = tl.minimum(hi, big)
    q = tl.minimum(lo + (top - lo) * (j.to(tl.float32) / (NP - 1)), top)
    return tl.where(j == NP - 1, top, q)


@triton.jit
def _chunk(row_ptr, c, c1, V, CHUNK: tl.constexpr):
    # chunk c of a row ([CHUNK] raw logits; nothing is read when c >= c1)
    o = c * CHUNK + tl.arange(0, CHUNK)
    return tl.load(row_ptr + o, mask=(o < V) & (c < c1), other=0.0)


@triton.jit
def round_item(logits_ptr, stride_row, temp_ptr, topk_ptr, topp_ptr, minp_ptr, row_f_ptr, bf_in_ptr, bi_in_ptr,
                bf_out_ptr, bi_out_ptr, cnt_in_ptr, mass_in_ptr, cnt_out_ptr, mass_out_ptr, win_ptr, count_next_ptr,
                count_draw_ptr, count_left_ptr, row, c0, c1, V, C, HAS_K: tl.constexpr, HAS_P: tl.constexpr,
                HAS_MINP: tl.constexpr, last,
                CHUNK: tl.constexpr, NP: tl.constexpr, PG: tl.constexpr, CPAD: tl.constexpr, NWIN: tl.constexpr):
    """One round's work on chunks [c0, c1) of a pending row (steps 1-3 of sampling_bracket's docstring; `last`:
    merge and gather only); the item with
    chunk 0 writes the row's new state. The first chunk, the row's state and the previous round's counts
    (read even when unused: they are in bounds) are loaded together, so an item waits on memory about once;
    each further chunk is fetched while the one before it is worked on."""
    row_ptr = logits_ptr + row * stride_row
    x = _chunk(row_ptr, c0, c1, V, CHUNK)
    cc = tl.arange(0, CPAD)[:, None]
    j = tl.arange(0, NP)
    part = (row * C + cc) * NP + j[None, :]
    cnt = tl.load(cnt_in_ptr + part, mask=cc < C, other=0)  # [CPAD, NP]
    pmass = tl.load(mass_in_ptr + part, mask=cc < C, other=0.0)
    t, k, p, mp = row_params(temp_ptr, topk_ptr, topp_ptr, minp_ptr, row, HAS_K, HAS_P, HAS_MINP)
    inv_t = 1.0 / tl.where(t > 0, t, 1.0)
    big = tl.load(row_f_ptr + row * 3)
    k_on, mass_on = predicate_bounds(k, p, V, tl.load(row_f_ptr + row * 3 + 1))
    lo = tl.load(bf_in_ptr + row * 4)
    hi = tl.load(bf_in_ptr + row * 4 + 1)
    m_hi = tl.load(bf_in_ptr + row * 4 + 2)
    ph = tl.load(bi_in_ptr + row * 4)
    n_hi = tl.load(bi_in_ptr + row * 4 + 1)
    n_win = tl.load(bi_in_ptr + row * 4 + 2)
    gather = tl.full([], 0, tl.int32)
    per = tl.zeros([CPAD], tl.int32)  # each chunk's tokens in the new bracket
    if ph == 1:
        q = _probes(lo, hi, big, j, NP)
        tc = tl.sum(cnt, 0)
        tm = tl.sum(pmass, 0)
        # at least one probe holds: lo does (forced when rounding of the mass makes it look otherwise)
        a = tl.maximum(tl.sum(((tc >= k_on) | (tm >= mass_on)).to(tl.int32)), 1)
        inner = a < NP
        lo = tl.max(tl.where(j == a - 1, q, float("-inf")))
        hi = tl.where(inner, tl.max(tl.where(j == a, q, float("-inf"))), hi)
        n_hi = tl.where(inner, tl.sum(tl.where(j == a, tc, 0)), n_hi)
        m_hi = tl.where(inner, tl.sum(tl.where(j == a, tm, 0.0)), m_hi)
        # a == NP: the predicate holds at the max itself, so v* = lo = max z (no window needed)
        n_win = tl.where(inner, tl.sum(tl.where(j == a - 1, tc, 0)) - n_hi, 0)
        if n_win <= NWIN:
            per = tl.sum(tl.where(j[None, :] == a - 1, cnt, 0), 1) - tl.sum(tl.where(j[None, :] == a, cnt, 0), 1)
            gather = inner.to(tl.int32)
            ph = 2
    if (ph < 2) & (k <= 0) & (p >= 1.0):  # min-p alone needs no v*
        ph = 2
    count = tl.full([], 0, tl.int32)
    if ph < 2:
        count = tl.where(last, 0, 1)
        ph = tl.where(last, 3, 1)
    if (gather + count) > 0:
        for c in range(c0, c1):
            x_next = _chunk(row_ptr, c + 1, c1, V, CHUNK)
            o = c * CHUNK + tl.arange(0, CHUNK)
            z = tl.where(o < V, x.to(tl.float32) * inv_t, float("-inf"))
            if gather > 0:  # this chunk's tokens in [lo, hi), after those of earlier chunks
                base = tl.sum(tl.where(tl.arange(0, CPAD) < c, per, 0))
                sel = (z >= lo) & (z < hi)
                pos = base + tl.cumsum(sel.to(tl.int32), 0) - 1
                tl.store(win_ptr + row * NWIN + pos, z, mask=sel & (pos < NWIN))
            if count > 0:  # tokens and mass at or above each new probe in this chunk, PG probes at a time
                e = tl.exp(z - big)[None, :]
                for g in tl.static_range(NP // PG):
                    jg = g * PG + tl.arange(0, PG)
                    ge = z[None, :] >= _probes(lo, hi, big, jg, NP)[:, None]  # [PG, CHUNK]
                    out = (row * C + c) * NP + jg
                    tl.store(cnt_out_ptr + out, tl.sum(ge.to(tl.int32), 1))
                    tl.store(mass_out_ptr + out, tl.sum(tl.where(ge, e, 0.0), 1))
            x = x_next
    if c0 == 0:
        # rows the next round works on (in the last round none: it adds 0 to the slot after its own)
        tl.atomic_add(count_next_ptr, (ph == 1).to(tl.int32), sem="relaxed")
        tl.atomic_add(count_draw_ptr, (ph == 2).to(tl.int32), sem="relaxed")  # rows the draw works on
        tl.atomic_add(count_left_ptr, (ph == 3).to(tl.int32), sem="relaxed")  # rows left to general_row
        tl.store(bf_out_ptr + row * 4, lo)
        tl.store(bf_out_ptr + row * 4 + 1, hi)
        tl.store(bf_out_ptr + row * 4 + 2, m_hi)
        tl.store(bi_out_ptr + row * 4, ph)
        tl.store(bi_out_ptr + row * 4 + 1, n_hi)
        tl.store(bi_out_ptr + row * 4 + 2, n_win)


@triton.jit
def draw_item(logits_ptr, stride_row, temp_ptr, seed_ptr, step_ptr, topk_ptr, topp_ptr, minp_ptr, row_f_ptr, bf_ptr,
              bi_ptr, win_ptr, part_f_ptr, part_i_ptr, row, c0, c1, V, C, HAS_K: tl.constexpr, HAS_P: tl.constexpr,
              HAS_MINP: tl.constexpr, LOGPROBS: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr,
              NWIN: tl.constexpr, NSMALL: tl.constexpr):
    """The draw on chunks [c0, c1) of a row with a gathered window: v* from the window (walk_window), min-p
    applied, then each chunk's Gumbel-max winner among z >= thr and its (max, sum exp) into part_f / part_i."""
    row_ptr = logits_ptr + row * stride_row
    x = first_block(row_ptr, c0 * CHUNK, tl.minimum(c0 * CHUNK + CHUNK, V), BLOCK)  # fetched beside the window
    t, k, p, mp = row_params(temp_ptr, topk_ptr, topp_ptr, minp_ptr, row, HAS_K, HAS_P, HAS_MINP)
    big = tl.load(row_f_ptr + row * 3)
    k_on, mass_on = predicate_bounds(k, p, V, tl.load(row_f_ptr + row * 3 + 1))
    lo = tl.load(bf_ptr + row * 4)
    seed = tl.load(seed_ptr + row)
    step = tl.load(step_ptr + row)
    vstar = walk_window(win_ptr + row * NWIN, tl.load(bi_ptr + row * 4 + 2), tl.load(bi_ptr + row * 4 + 1),
                        tl.load(bf_ptr + row * 4 + 2), big, k_on, mass_on, NWIN, NSMALL)
    thr = threshold(tl.maximum(vstar, lo), k, p, mp, big)
    sampled = t > 0
    inv_t = 1.0 / tl.where(sampled, t, 1.0)
    for c in range(c0, c1):
        end = tl.minimum(c * CHUNK + CHUNK, V)
        nxt = (c + 1) * CHUNK  # the next chunk's first block (none after the last)
        x_next = first_block(row_ptr, nxt, tl.where(c + 1 < c1, tl.minimum(nxt + CHUNK, V), nxt), BLOCK)
        win, tok, m, s = scan_chunk(row_ptr, c * CHUNK, end, inv_t, sampled, seed, step, thr, LOGPROBS, True,
                                    BLOCK, x)
        x = x_next
        slot = row * C + c
        tl.store(part_f_ptr + slot * 3, win)
        tl.store(part_i_ptr + slot, tok)
        if LOGPROBS:
            tl.store(part_f_ptr + slot * 3 + 1, m)
            tl.store(part_f_ptr + slot * 3 + 2, s)
