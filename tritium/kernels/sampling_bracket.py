"""Top-k / top-p thresholds of rows the candidate window did not settle, found in parallel over the vocabulary.

Semantics as in sampling_filter.py: v* is the largest present value v of z = logits / T where the predicate
holds: count(z >= v) >= k_on or mass(z >= v) >= mass_on (both fall as v rises).

A pending row keeps a bracket [lo, hi): the predicate holds at lo and fails at hi (hi = +inf at first, lo the
row's smallest finite z), with n_hi tokens of mass m_hi at or above hi. Each round is one launch of a
persistent grid (a few programs per SM) whose programs take the work items (pending row, G consecutive
CHUNKs of it; sampling_items.py) in turn: one pending row spreads over V / CHUNK programs (G = 1), many
pending rows give each program a few long items (G grows only when the items outnumber the grid). Each launch
counts the rows the next one works on (atomically; the candidate pass zeroes the counts), so programs
without an item leave after one load. An item loads its chunk (held in registers), the row
state and the previous round's counts all at once, then:
1. merges the previous round: sums its per-chunk counts and masses at NP probes, spread evenly over
   [lo, min(hi, max z)] (the first at lo, the last at the top); the predicate holds at the first a probes,
   so the bracket becomes [probe a-1, probe a) (a = NP: [the top, hi)), about NP - 1 times narrower.
2. if the bracket now holds at most NWIN tokens, gathers them: its chunk's share at an offset given by the
   per-chunk counts (a fixed order, so the window is deterministic);
3. else counts tokens and mass at or above the new probes in its chunk, for the next round.
The last launch only merges and gathers; a row still too wide (huge ties, or more rounds needed) is left
to the exact sequential kernel of sampling_threshold.py. Phases per row: 0 bracket set, 1 partials
written, 2 window gathered, 3 left to the sequential kernel, 4 finished earlier (not pending).
Then _bracket_draw_kernel, the same grid over the rows in phase 2: sorts the window (walk_window) for v*,
applies min-p, and scans its chunks for the Gumbel-max winner among z >= thr (the plain path's scan);
sampling's merge kernel picks the row's winner.
State buffers are double: round r reads one and writes the other, as other programs of the same launch
may still be reading the state of the previous round (program 0 carries the other rows' state over).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritium.autotune import next_pow2
from tritium.kernels import sampling_threshold as th
from tritium.kernels.gumbel import first_block, scan_chunk
from tritium.kernels.sampling import _sample_merge_kernel
from tritium.kernels.sampling_items import PHASE_DONE, item_chunks, items_per_row, phases, programs, rows_in_phase
from tritium.kernels.sampling_threshold import predicate_bounds, row_params, threshold, walk_window

NPROBES = 8  # probes per round: the bracket narrows ~7x per round (16 probes cost ~2x as much per round)
ROUNDS = 4  # rounds that probe; then one more launch that only merges and gathers
COUNT_SLOTS = 8  # >= ROUNDS + 2: rows pending at each round launch, then at the draw
ROUND_CHUNK = 2048  # tokens per work item of the rounds and the draw (74 items for a 151,936 row)
PROBE_GROUP = 4  # probes compared at once: [PROBE_GROUP, ROUND_CHUNK] per step
ROUND_WARPS = 4
# Register cap of the round kernel (None: the compiler's choice). Uncapped it takes 195 registers (ptxas, sm_90),
# so 2 of the PROGRAMS_PER_SM = 4 programs per SM are resident; 128 fits 4 with ~60 bytes of spills (untimed).
ROUND_MAXNREG = None
DRAW_BLOCK = 1024  # tokens per loop step of the draw
DRAW_SMALL = 256  # bracket windows of at most this many values are sorted on a tile this wide


@triton.jit
def init_bracket(bf_ptr, bi_ptr, row, B, done, lo):
    """A row's first state in both buffers of bf / bi [2, B, 4]: pending rows get [lo, +inf), phase 0."""
    ph = tl.where(done, PHASE_DONE, 0)
    for buf in tl.static_range(2):
        tl.store(bi_ptr + (buf * B + row) * 4, ph)
    tl.store(bi_ptr + row * 4 + 1, 0)
    tl.store(bi_ptr + row * 4 + 2, 0)
    tl.store(bf_ptr + row * 4, lo)
    tl.store(bf_ptr + row * 4 + 1, float("inf"))
    tl.store(bf_ptr + row * 4 + 2, 0.0)


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
def _round_item(logits_ptr, stride_row, temp_ptr, topk_ptr, topp_ptr, minp_ptr, row_f_ptr, bf_in_ptr, bi_in_ptr,
                bf_out_ptr, bi_out_ptr, cnt_in_ptr, mass_in_ptr, cnt_out_ptr, mass_out_ptr, win_ptr, count_next_ptr,
                count_draw_ptr, row, c0, c1, V, C, HAS_K: tl.constexpr, HAS_P: tl.constexpr, HAS_MINP: tl.constexpr,
                LAST: tl.constexpr,
                CHUNK: tl.constexpr, NP: tl.constexpr, PG: tl.constexpr, CPAD: tl.constexpr, NWIN: tl.constexpr):
    """One round's work on chunks [c0, c1) of a pending row (steps 1-3 of the module docstring); the item with
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
        if LAST:
            ph = 3
        else:
            count = 1
            ph = 1
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
        tl.atomic_add(count_next_ptr, (ph == 1).to(tl.int32), sem="relaxed")  # rows the next launch works on
        tl.atomic_add(count_draw_ptr, (ph == 2).to(tl.int32), sem="relaxed")  # rows the draw works on
        tl.store(bf_out_ptr + row * 4, lo)
        tl.store(bf_out_ptr + row * 4 + 1, hi)
        tl.store(bf_out_ptr + row * 4 + 2, m_hi)
        tl.store(bi_out_ptr + row * 4, ph)
        tl.store(bi_out_ptr + row * 4 + 1, n_hi)
        tl.store(bi_out_ptr + row * 4 + 2, n_win)


@triton.jit
def _bracket_round_kernel(
    logits_ptr,  # [B, V] fp32/bf16/fp16
    stride_row,
    temp_ptr, topk_ptr, topp_ptr, minp_ptr,  # [B] fp32, int32, fp32, fp32
    row_f_ptr,  # [B, 3] fp32: max z, sum exp(z - max), min finite z
    bf_in_ptr, bi_in_ptr,  # [B, 4] fp32 (lo, hi, m_hi, -), int32 (phase, n_hi, n_win, -): previous round
    bf_out_ptr, bi_out_ptr,  # the same, written for every row
    cnt_in_ptr, mass_in_ptr,  # [B, C, NP] int32, fp32: the previous round's counts and masses at its probes
    cnt_out_ptr, mass_out_ptr,  # [B, C, NP] this round's
    win_ptr,  # [B, NWIN] fp32 out: the window
    count_ptr,  # [1] int32: rows pending at this launch (counted by the launch before)
    count_next_ptr, count_draw_ptr,  # [1] int32 out (atomic): rows pending at the next launch / for the draw
    B, V, C,
    HAS_K: tl.constexpr, HAS_P: tl.constexpr, HAS_MINP: tl.constexpr,
    LAST: tl.constexpr,  # merge and gather only
    CHUNK: tl.constexpr, NP: tl.constexpr, PG: tl.constexpr, CPAD: tl.constexpr, NWIN: tl.constexpr,
    BPAD: tl.constexpr,  # next_pow2(B)
):
    # The phases, the pending count and (program 0, which carries the rows not pending into the other
    # buffer) every row's state are fetched at once; programs without an item then leave before listing the
    # rows (a scan over the batch).
    ph = phases(bi_in_ptr, B, BPAD)
    n_count = tl.load(count_ptr)
    rows = tl.arange(0, BPAD)
    e = rows[:, None] * 4 + tl.arange(0, 4)[None, :]
    first = (rows < B)[:, None] & (tl.program_id(0) == 0)
    old_f = tl.load(bf_in_ptr + e, mask=first)
    old_i = tl.load(bi_in_ptr + e, mask=first)
    if (tl.program_id(0) > 0) & (tl.program_id(0) >= n_count * C):  # (a bound that only grows with the count)
        return
    rows, sel, rank, n = rows_in_phase(ph, 0, 1, BPAD)
    keep = first & ~sel[:, None]
    tl.store(bf_out_ptr + e, old_f, mask=keep)
    tl.store(bi_out_ptr + e, old_i, mask=keep)
    per_row, g = items_per_row(n, C)
    for item in range(tl.program_id(0), n * per_row, tl.num_programs(0)):
        row, c0, c1 = item_chunks(rows, sel, rank, item, per_row, g, C)
        _round_item(logits_ptr, stride_row, temp_ptr, topk_ptr, topp_ptr, minp_ptr, row_f_ptr, bf_in_ptr, bi_in_ptr,
                    bf_out_ptr, bi_out_ptr, cnt_in_ptr, mass_in_ptr, cnt_out_ptr, mass_out_ptr, win_ptr,
                    count_next_ptr, count_draw_ptr, row, c0, c1, V, C, HAS_K, HAS_P, HAS_MINP, LAST, CHUNK, NP, PG,
                    CPAD, NWIN)


@triton.jit
def _bracket_draw_kernel(
    logits_ptr,  # [B, V]
    stride_row,
    temp_ptr, seed_ptr, step_ptr,  # [B] fp32, int64, int64
    topk_ptr, topp_ptr, minp_ptr,  # [B] int32, fp32, fp32
    row_f_ptr,  # [B, 3] fp32
    bf_ptr, bi_ptr,  # [B, 4] the final bracket state
    win_ptr,  # [B, NWIN] fp32: the gathered windows
    part_f_ptr,  # [B, C, 3] fp32 out: best score, max z, sum exp(z - max) over the kept tokens of the chunk
    part_i_ptr,  # [B, C] int32 out: best token
    count_ptr,  # [1] int32: rows in phase 2 (counted by the rounds)
    B, V, C,
    HAS_K: tl.constexpr, HAS_P: tl.constexpr, HAS_MINP: tl.constexpr, LOGPROBS: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK: tl.constexpr, NWIN: tl.constexpr, BPAD: tl.constexpr,
    NSMALL: tl.constexpr,  # <= NWIN
):
    ph = phases(bi_ptr, B, BPAD)  # (fetched beside the count)
    n_count = tl.load(count_ptr)
    if tl.program_id(0) >= n_count * C:
        return
    rows, sel, rank, n = rows_in_phase(ph, 2, 2, BPAD)
    per_row, g = items_per_row(n, C)
    for item in range(tl.program_id(0), n * per_row, tl.num_programs(0)):
        row, c0, c1 = item_chunks(rows, sel, rank, item, per_row, g, C)
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


def reset_brackets(state, row_f, bf, bi, counts) -> None:
    """Make every row pending with a fresh bracket (tests: the bracket path on rows the window settles)."""
    counts.zero_()
    counts[0] = state.shape[0]
    state.fill_(1)
    bi.zero_()
    bf[0, :, 0] = row_f[:, 2]
    bf[0, :, 1] = float("inf")
    bf[0, :, 2] = 0.0


def draw_pending(logits, temperature, seeds, offsets, filt, flags, row_f, state, bf, bi, counts, win, out, lp):
    """Bracket rounds, draw and merge for rows in phase 0 (pending), then the sequential kernel for the rows
    left over. filt: the (top_k, top_p, min_p) tensors (dummies where off); flags: HAS_K, HAS_P, HAS_MINP,
    LOGPROBS; counts [COUNT_SLOTS] int32: the rows pending at round 0 in counts[0], the rest zero;
    win [B, NWIN] fp32 scratch; lp: logprobs out (a dummy without LOGPROBS)."""
    B, V = logits.shape
    chunk = min(ROUND_CHUNK, next_pow2(V))
    C = -(-V // chunk)
    nwin = win.shape[1]
    has = {k: flags[k] for k in ("HAS_K", "HAS_P", "HAS_MINP")}
    grid = (programs(logits.device, B * C),)
    assert counts.numel() >= ROUNDS + 2, "COUNT_SLOTS must cover every round launch and the draw"
    cnt = torch.empty((2, B, C, NPROBES), dtype=torch.int32, device=logits.device)
    mass = torch.empty((2, B, C, NPROBES), dtype=torch.float32, device=logits.device)
    cap = {} if ROUND_MAXNREG is None else {"maxnreg": ROUND_MAXNREG}
    for r in range(ROUNDS + 1):
        i, o = r % 2, (r + 1) % 2
        _bracket_round_kernel[grid](
            logits, logits.stride(0), temperature, *filt, row_f, bf[i], bi[i], bf[o], bi[o], cnt[i], mass[i],
            cnt[o], mass[o], win, counts[r:], counts[r + 1:], counts[ROUNDS + 1:], B, V, C, **has, LAST=r == ROUNDS,
            CHUNK=chunk, NP=NPROBES,
            PG=PROBE_GROUP, CPAD=next_pow2(C), NWIN=nwin, BPAD=next_pow2(B), num_warps=ROUND_WARPS, **cap)
    fin = (ROUNDS + 1) % 2
    part_f = torch.empty((B, C, 3), dtype=torch.float32, device=logits.device)
    part_i = torch.empty((B, C), dtype=torch.int32, device=logits.device)
    _bracket_draw_kernel[grid](logits, logits.stride(0), temperature, seeds, offsets, *filt, row_f, bf[fin], bi[fin],
                               win, part_f, part_i, counts[ROUNDS + 1:], B, V, C, **flags, CHUNK=chunk,
                               BLOCK=max(4, min(DRAW_BLOCK, chunk)), NWIN=nwin, NSMALL=min(DRAW_SMALL, nwin),
                               BPAD=next_pow2(B), num_warps=4)
    _sample_merge_kernel[(B,)](part_f, part_i, logits, logits.stride(0), temperature, out, lp, C,
                               STATS=flags["LOGPROBS"], CPAD=next_pow2(C), gate_ptr=bi[fin], GATE=2)
    th._filter_general_kernel[(B,)](logits, logits.stride(0), temperature, seeds, offsets, *filt, row_f, bi[fin],
                                    state, win, out, lp, V, th.MAX_ROUNDS, **flags, NWIN=nwin, NP=th.NPROBE,
                                    BLOCK=th.GENERAL_BLOCK, num_warps=8)
