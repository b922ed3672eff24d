"""4. The exact kept set of the rows the candidate window (filtered.py) left pending, found in parallel over
the vocabulary, and their draw. v* is the largest present value v of z = logits / T where the predicate holds:
count(z >= v) >= k_on or mass(z >= v) >= mass_on (both fall as v rises; exact.py).

A pending row keeps a bracket [lo, hi) (PendingRows.bracket_f / bracket_i, columns BR_*): the predicate holds
at lo and fails at hi (hi = +inf at first, lo the row's smallest finite z), with n_hi tokens of mass m_hi at
or above hi. One cooperative launch (_bracket_kernel: every program resident, grid_sync between stages) runs
the stages: rounds 0..ROUNDS, the draw, the merge. In each, the programs take the work items (a row, G
consecutive CHUNKs of it) in turn: one pending row spreads over V / CHUNK programs (G = 1), many pending rows
give each program a few long items (G grows only when the items outnumber the grid). Each round counts the
rows the next one works on (atomically; the candidate pass zeroes the counts); when none is left the rounds
stop, so a batch without pending rows costs one launch that reads a count. A round item (round_item) loads
its chunk (held in registers), the row state and the previous round's counts all at once, then:
1. merges the previous round: sums its per-chunk counts and masses at NP probes, spread evenly over
   [lo, min(hi, max z)] (the first at lo, the last at the top); the predicate holds at the first a probes,
   so the bracket becomes [probe a-1, probe a) (a = NP: [the top, hi)), about NP - 1 times narrower.
2. if the bracket now holds at most NWIN tokens, gathers them: its chunk's share at an offset given by the
   per-chunk counts (a fixed order, so the window is deterministic);
3. else counts tokens and mass at or above the new probes in its chunk, for the next round.
Round ROUNDS only merges and gathers; a row still too wide (huge ties, or more rounds needed) is left to the
exact sequential draw, exact.general_row (phases: PHASE_* in exact.py).
The draw (draw_item) works on the rows in PHASE_WINDOW: sorts the window (walk_window) for v*, applies
min-p, and scans its chunks for the Gumbel-max winner among z >= thr (the plain path's scan, into
ChunkWinners). The last stage merges: it picks each drawn row's winner (plain.merge_row), and general_row
draws the rows left over (one program each).
State buffers are double: round r reads one and writes the other, as other programs may still be reading the
state of the previous round (program 0 carries the other rows' state over); counts slot `fin` says which
buffer holds the final state. Without a cooperative launch (the interpreter, or COOPERATIVE = 0) each stage
is a launch of its own, on the same kernel.

Work items: a stage lists its rows from the phase column of a state buffer that no program of the same
launch writes, so every program sees the same list (rows_in_phase), and deals (row, chunks [c0, c1)) items
to the programs (items_per_row, item_chunks). The chunking never changes, only which program takes which
chunk, so no sum depends on the batch.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritium.autotune import next_pow2
from tritium.kernels.cooperative import (coresident_programs, grid_sync, item_chunks, items_per_row, programs,
                                         selected_row, specialization)
from tritium.kernels.sampling import exact
from tritium.kernels.sampling.exact import (BR_COLS, BR_HI, BR_LO, BR_MASS_HI, BR_N_HI, BR_N_WIN, BR_PHASE,
                                            PHASE_BRACKET, PHASE_COUNTED, PHASE_DONE, PHASE_SEQUENTIAL, PHASE_WINDOW,
                                            ROW_COLS, ROW_MAX, ROW_SUMEXP, general_row, predicate_bounds, row_params,
                                            threshold, walk_window)
from tritium.kernels.sampling.plain import ChunkWinners, first_block, merge_row, scan_chunk, store_chunk_winner
from tritium.platform import INTERPRET

NPROBES = 8  # probes per round: the bracket narrows ~7x per round
ROUNDS = 4  # rounds that probe; then one more that only merges and gathers
COOPERATIVE = 1  # 1: every stage in one cooperative launch; 0: one launch per stage (as under the interpreter)
ROUND_CHUNK = 2048  # tokens per work item of the rounds and the draw (74 items for a 151,936 row)
PROBE_GROUP = 4  # probes compared at once: [PROBE_GROUP, ROUND_CHUNK] per step
ROUND_WARPS = 4
DRAW_BLOCK = 1024  # tokens per loop step of the draw
DRAW_SMALL = 256  # bracket windows of at most this many values are sorted on a tile this wide


@triton.jit
def phases(bi_ptr, B, BPAD: tl.constexpr):
    # [BPAD] every row's phase (a bracket_i buffer [B, BR_COLS]; PHASE_DONE past B)
    b = tl.arange(0, BPAD)
    return tl.load(bi_ptr + b * BR_COLS + BR_PHASE, mask=b < B, other=PHASE_DONE)


@triton.jit
def rows_in_phase(ph, PH_MIN: tl.constexpr, PH_MAX: tl.constexpr, BPAD: tl.constexpr):
    """The rows whose phase (from phases) lies in [PH_MIN, PH_MAX]: (row ids, selected, rank among the
    selected, their number), from which items_per_row and item_chunks lay out the work items."""
    sel = (ph >= PH_MIN) & (ph <= PH_MAX)
    return tl.arange(0, BPAD), sel, tl.cumsum(sel.to(tl.int32), 0) - 1, tl.sum(sel.to(tl.int32))


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
    """One round's work on chunks [c0, c1) of a pending row (steps 1-3 of the module docstring; `last`:
    merge and gather only); the item with chunk 0 writes the row's new state. The first chunk, the row's
    state and the previous round's counts (read even when unused: they are in bounds) are loaded together,
    so an item waits on memory about once; each further chunk is fetched while the one before it is worked on."""
    row_ptr = logits_ptr + row * stride_row
    x = _chunk(row_ptr, c0, c1, V, CHUNK)
    cc = tl.arange(0, CPAD)[:, None]
    j = tl.arange(0, NP)
    part = (row * C + cc) * NP + j[None, :]
    cnt = tl.load(cnt_in_ptr + part, mask=cc < C, other=0)  # [CPAD, NP]
    pmass = tl.load(mass_in_ptr + part, mask=cc < C, other=0.0)
    t, k, p, mp = row_params(temp_ptr, topk_ptr, topp_ptr, minp_ptr, row, HAS_K, HAS_P, HAS_MINP)
    inv_t = 1.0 / tl.where(t > 0, t, 1.0)
    big = tl.load(row_f_ptr + row * ROW_COLS + ROW_MAX)
    k_on, mass_on = predicate_bounds(k, p, V, tl.load(row_f_ptr + row * ROW_COLS + ROW_SUMEXP))
    lo = tl.load(bf_in_ptr + row * BR_COLS + BR_LO)
    hi = tl.load(bf_in_ptr + row * BR_COLS + BR_HI)
    m_hi = tl.load(bf_in_ptr + row * BR_COLS + BR_MASS_HI)
    ph = tl.load(bi_in_ptr + row * BR_COLS + BR_PHASE)
    n_hi = tl.load(bi_in_ptr + row * BR_COLS + BR_N_HI)
    n_win = tl.load(bi_in_ptr + row * BR_COLS + BR_N_WIN)
    gather = tl.full([], 0, tl.int32)
    per = tl.zeros([CPAD], tl.int32)  # each chunk's tokens in the new bracket
    if ph == PHASE_COUNTED:
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
            ph = PHASE_WINDOW
    if (ph < PHASE_WINDOW) & (k <= 0) & (p >= 1.0):  # min-p alone needs no v*
        ph = PHASE_WINDOW
    count = tl.full([], 0, tl.int32)
    if ph < PHASE_WINDOW:
        count = tl.where(last, 0, 1)
        ph = tl.where(last, PHASE_SEQUENTIAL, PHASE_COUNTED)
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
        tl.atomic_add(count_next_ptr, (ph == PHASE_COUNTED).to(tl.int32), sem="relaxed")
        tl.atomic_add(count_draw_ptr, (ph == PHASE_WINDOW).to(tl.int32), sem="relaxed")  # rows the draw works on
        tl.atomic_add(count_left_ptr, (ph == PHASE_SEQUENTIAL).to(tl.int32), sem="relaxed")  # left to general_row
        tl.store(bf_out_ptr + row * BR_COLS + BR_LO, lo)
        tl.store(bf_out_ptr + row * BR_COLS + BR_HI, hi)
        tl.store(bf_out_ptr + row * BR_COLS + BR_MASS_HI, m_hi)
        tl.store(bi_out_ptr + row * BR_COLS + BR_PHASE, ph)
        tl.store(bi_out_ptr + row * BR_COLS + BR_N_HI, n_hi)
        tl.store(bi_out_ptr + row * BR_COLS + BR_N_WIN, n_win)


@triton.jit
def draw_item(logits_ptr, stride_row, temp_ptr, seed_ptr, step_ptr, topk_ptr, topp_ptr, minp_ptr, row_f_ptr, bf_ptr,
              bi_ptr, win_ptr, win_stats_ptr, win_token_ptr, row, c0, c1, V, C, HAS_K: tl.constexpr,
              HAS_P: tl.constexpr, HAS_MINP: tl.constexpr, LOGPROBS: tl.constexpr, CHUNK: tl.constexpr,
              BLOCK: tl.constexpr, NWIN: tl.constexpr, NSMALL: tl.constexpr):
    """The draw on chunks [c0, c1) of a row with a gathered window: v* from the window (walk_window), min-p
    applied, then each chunk's Gumbel-max winner among z >= thr and its (max, sum exp) into ChunkWinners."""
    row_ptr = logits_ptr + row * stride_row
    x = first_block(row_ptr, c0 * CHUNK, tl.minimum(c0 * CHUNK + CHUNK, V), BLOCK)  # fetched beside the window
    t, k, p, mp = row_params(temp_ptr, topk_ptr, topp_ptr, minp_ptr, row, HAS_K, HAS_P, HAS_MINP)
    big = tl.load(row_f_ptr + row * ROW_COLS + ROW_MAX)
    k_on, mass_on = predicate_bounds(k, p, V, tl.load(row_f_ptr + row * ROW_COLS + ROW_SUMEXP))
    lo = tl.load(bf_ptr + row * BR_COLS + BR_LO)
    seed = tl.load(seed_ptr + row)
    step = tl.load(step_ptr + row)
    vstar = walk_window(win_ptr + row * NWIN, tl.load(bi_ptr + row * BR_COLS + BR_N_WIN),
                        tl.load(bi_ptr + row * BR_COLS + BR_N_HI), tl.load(bf_ptr + row * BR_COLS + BR_MASS_HI), big,
                        k_on, mass_on, NWIN, NSMALL)
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
        store_chunk_winner(win_stats_ptr, win_token_ptr, row * C + c, win, tok, m, s, LOGPROBS)


# S0 = 1 as a constexpr would break the loop-carried stage r; and variants must not depend on step sizes
# (autotune.SPECIALIZATION)
@triton.jit(do_not_specialize=["S0", "S1", "B"],
            do_not_specialize_on_alignment=["temp_ptr", "seed_ptr", "step_ptr", "topk_ptr", "topp_ptr", "minp_ptr"])
def _bracket_kernel(
    logits_ptr,  # [B, V] fp32/bf16/fp16
    stride_row,
    temp_ptr, seed_ptr, step_ptr,  # [B] fp32, int64, int64
    topk_ptr, topp_ptr, minp_ptr,  # [B] int32, fp32, fp32
    row_f_ptr,  # [B, ROW_COLS] fp32: PendingRows.row_stats
    bf_ptr, bi_ptr,  # [2, B, BR_COLS] fp32 / int32: PendingRows.bracket_f / bracket_i, double-buffered state
    cnt_ptr, mass_ptr,  # [2, B, C, NP] int32, fp32: counts and masses at each round's probes, double-buffered
    win_ptr,  # [B, NWIN] fp32: the windows (PendingRows.window_z)
    win_stats_ptr, win_token_ptr,  # [B, C, WIN_COLS] fp32, [B, C] int32: the draw's ChunkWinners
    out_ptr, lp_ptr,  # [B] int64, fp32 out: token, logprob (if LOGPROBS)
    path_ptr,  # [B] int32 out: PATH_SEQUENTIAL for the rows general_row draws
    counts_ptr,  # [COUNT_SLOTS] int32: pending rows per round, rows to draw, rows left over, sync counter, `fin`
    S0, S1,  # the stages this launch runs: rounds 0..ROUNDS, DRAW, then the merge and the rows left over
    B, V, C, max_rounds,
    HAS_K: tl.constexpr, HAS_P: tl.constexpr, HAS_MINP: tl.constexpr, LOGPROBS: tl.constexpr,
    ROUNDS: tl.constexpr,
    CHUNK: tl.constexpr, NP: tl.constexpr, PG: tl.constexpr, CPAD: tl.constexpr, NWIN: tl.constexpr,
    BPAD: tl.constexpr,  # next_pow2(B)
    BLOCK: tl.constexpr,  # the draw's tokens per step
    NSMALL: tl.constexpr,  # <= NWIN: the draw's narrow window tile
    GNP: tl.constexpr, GBLOCK: tl.constexpr,  # general_row's probes and tokens per step
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    draw_count = counts_ptr + ROUNDS + 1
    left_count = counts_ptr + ROUNDS + 2
    sync_ptr = counts_ptr + ROUNDS + 3
    fin_ptr = counts_ptr + ROUNDS + 4
    DRAW: tl.constexpr = ROUNDS + 1
    syncs = tl.zeros([], tl.int32)
    r = S0
    n_count = tl.load(counts_ptr + tl.minimum(r, ROUNDS), volatile=True)
    while (r <= S1) & (r <= ROUNDS) & (n_count > 0):  # (no row pending at round r: none at later ones either)
        i_f = bf_ptr + r % 2 * B * BR_COLS
        i_i = bi_ptr + r % 2 * B * BR_COLS
        o_f = bf_ptr + (r + 1) % 2 * B * BR_COLS
        o_i = bi_ptr + (r + 1) % 2 * B * BR_COLS
        # program 0 carries the rows not pending over into the other buffer (fetched beside the phases)
        ph = phases(i_i, B, BPAD)
        rows = tl.arange(0, BPAD)
        e = rows[:, None] * BR_COLS + tl.arange(0, BR_COLS)[None, :]
        first = (rows < B)[:, None] & (pid == 0)
        old_f = tl.load(i_f + e, mask=first)
        old_i = tl.load(i_i + e, mask=first)
        if pid == 0:
            tl.store(fin_ptr, (r + 1) % 2)  # the buffer the final state is in
        if pid < n_count * C:  # (a bound on the items that only grows with the count)
            rows, sel, rank, n = rows_in_phase(ph, PHASE_BRACKET, PHASE_COUNTED, BPAD)
            keep = first & ~sel[:, None]
            tl.store(o_f + e, old_f, mask=keep)
            tl.store(o_i + e, old_i, mask=keep)
            per_row, g = items_per_row(n, C)
            for item in range(pid, n * per_row, nprog):
                row, c0, c1 = item_chunks(rows, sel, rank, item, per_row, g, C)
                round_item(logits_ptr, stride_row, temp_ptr, topk_ptr, topp_ptr, minp_ptr, row_f_ptr, i_f, i_i, o_f,
                           o_i, cnt_ptr + r % 2 * B * C * NP, mass_ptr + r % 2 * B * C * NP,
                           cnt_ptr + (r + 1) % 2 * B * C * NP, mass_ptr + (r + 1) % 2 * B * C * NP, win_ptr,
                           counts_ptr + r + 1, draw_count, left_count, row, c0, c1, V, C, HAS_K, HAS_P, HAS_MINP,
                           r == ROUNDS, CHUNK, NP, PG, CPAD, NWIN)
        r += 1
        if S1 >= r:
            syncs += 1
            grid_sync(sync_ptr, syncs * nprog)
        n_count = tl.load(counts_ptr + tl.minimum(r, ROUNDS), volatile=True)
    n_draw = tl.load(draw_count, volatile=True)
    fin = tl.load(fin_ptr, volatile=True)
    f_f = bf_ptr + fin * B * BR_COLS
    f_i = bi_ptr + fin * B * BR_COLS
    if (S0 <= DRAW) & (S1 >= DRAW) & (n_draw > 0):
        rows, sel, rank, n = rows_in_phase(phases(f_i, B, BPAD), PHASE_WINDOW, PHASE_WINDOW, BPAD)
        per_row, g = items_per_row(n, C)
        for item in range(pid, n * per_row, nprog):
            row, c0, c1 = item_chunks(rows, sel, rank, item, per_row, g, C)
            draw_item(logits_ptr, stride_row, temp_ptr, seed_ptr, step_ptr, topk_ptr, topp_ptr, minp_ptr, row_f_ptr,
                      f_f, f_i, win_ptr, win_stats_ptr, win_token_ptr, row, c0, c1, V, C, HAS_K, HAS_P, HAS_MINP,
                      LOGPROBS, CHUNK, BLOCK, NWIN, NSMALL)
        if S1 > DRAW:
            syncs += 1
            grid_sync(sync_ptr, syncs * nprog)
    n_left = tl.load(left_count, volatile=True)
    if (S1 > DRAW) & ((n_draw > 0) | (n_left > 0)):
        ph = phases(f_i, B, BPAD)
        if n_draw > 0:  # the merge: each drawn row's winner of its chunk winners
            rows, sel, rank, n = rows_in_phase(ph, PHASE_WINDOW, PHASE_WINDOW, BPAD)
            for j in range(pid, n, nprog):
                row = selected_row(rows, sel, rank, j)
                merge_row(win_stats_ptr, win_token_ptr, logits_ptr, stride_row, temp_ptr, out_ptr, lp_ptr, row, C,
                          LOGPROBS, CPAD)
        if n_left > 0:  # rows the rounds left over: one program each, from the last programs down
            rows, sel, rank, n = rows_in_phase(ph, PHASE_SEQUENTIAL, PHASE_SEQUENTIAL, BPAD)
            for j in range(nprog - 1 - pid, n, nprog):
                row = selected_row(rows, sel, rank, j)
                general_row(logits_ptr, stride_row, temp_ptr, seed_ptr, step_ptr, topk_ptr, topp_ptr, minp_ptr,
                            row_f_ptr, path_ptr, win_ptr, out_ptr, lp_ptr, row, V, max_rounds, HAS_K, HAS_P,
                            HAS_MINP, LOGPROBS, NWIN, GNP, GBLOCK)


def draw_pending(logits, temperature, seeds, offsets, filt, flags, pending, out, lp):
    """Bracket rounds, draw and merge for the pending rows of `pending` (PendingRows from
    filtered.sample_candidates: counts[0] rows pending at round 0, the other counts zero), and general_row for
    the rows left over, into out ([B] int64) and lp ([B] fp32 logprobs; any fp32 dummy without LOGPROBS).
    filt, flags: exact.filter_args'."""
    B, V = logits.shape
    dev = logits.device
    chunk = min(ROUND_CHUNK, next_pow2(V))
    C = -(-V // chunk)
    win = pending.window_z
    assert pending.counts.numel() >= ROUNDS + 5, "COUNT_SLOTS must cover the rounds, the draw, rows left, sync, fin"
    cnt = torch.empty((2, B, C, NPROBES), dtype=torch.int32, device=dev)
    mass = torch.empty((2, B, C, NPROBES), dtype=torch.float32, device=dev)
    winners = ChunkWinners.empty(B, C, dev)
    args = (logits, logits.stride(0), temperature, seeds, offsets, *filt, pending.row_stats, pending.bracket_f,
            pending.bracket_i, cnt, mass, win, winners.stats, winners.token, out, lp, pending.path, pending.counts)
    meta = dict(**flags, ROUNDS=ROUNDS, CHUNK=chunk, NP=NPROBES, PG=PROBE_GROUP, CPAD=next_pow2(C), NWIN=win.shape[1],
                BPAD=next_pow2(B), BLOCK=max(4, min(DRAW_BLOCK, chunk)), NSMALL=min(DRAW_SMALL, win.shape[1]),
                GNP=exact.NPROBE, GBLOCK=exact.GENERAL_BLOCK, num_warps=ROUND_WARPS)
    merge = ROUNDS + 2
    n = programs(dev, B * C) if INTERPRET or not COOPERATIVE else min(B * C, _coresident(dev, args, B, V, C, meta))
    if COOPERATIVE and (not INTERPRET or n == 1):  # (the interpreter runs programs one after another)
        _bracket_kernel[(n,)](*args, 0, merge, B, V, C, exact.MAX_ROUNDS, **meta, launch_cooperative_grid=True)
    else:
        for stage in range(merge + 1):
            _bracket_kernel[(n,)](*args, stage, stage, B, V, C, exact.MAX_ROUNDS, **meta)

_CORESIDENT = {}  # (device, how Triton specializes the arguments, constexprs) -> programs of a cooperative launch


def _coresident(dev, args, B, V, C, meta) -> int:
    key = (str(dev), specialization((*args, B, V, C)), tuple(sorted(meta.items())))
    if key not in _CORESIDENT:
        compiled = _bracket_kernel.warmup(*args, 0, 1, B, V, C, exact.MAX_ROUNDS, **meta, launch_cooperative_grid=True,
                                          grid=(1,))
        _CORESIDENT[key] = coresident_programs(compiled, dev)
    return _CORESIDENT[key]
