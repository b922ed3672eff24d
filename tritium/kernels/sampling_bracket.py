"""Top-k / top-p thresholds of rows the candidate window did not settle, found in parallel over the vocabulary.

Semantics as in sampling_filter.py: v* is the largest present value v of z = logits / T where the predicate
holds: count(z >= v) >= k_on or mass(z >= v) >= mass_on (both fall as v rises).

A pending row keeps a bracket [lo, hi): the predicate holds at lo and fails at hi (hi = +inf at first, lo the
row's smallest finite z), with n_hi tokens of mass m_hi at or above hi. One cooperative launch (_bracket_kernel:
every program resident, sampling_items.grid_sync between stages) runs the stages: rounds 0..ROUNDS, the draw,
the merge. In each, the programs take the work items (pending row, G consecutive CHUNKs of it;
sampling_items.py) in turn: one pending row spreads over V / CHUNK programs (G = 1), many pending rows give
each program a few long items (G grows only when the items outnumber the grid). Each round counts the rows
the next one works on (atomically; the candidate pass zeroes the counts); when none is left the rounds stop,
so a batch without pending rows costs one launch that reads a count. A round item loads its chunk (held in
registers), the row state and the previous round's counts all at once, then:
1. merges the previous round: sums its per-chunk counts and masses at NP probes, spread evenly over
   [lo, min(hi, max z)] (the first at lo, the last at the top); the predicate holds at the first a probes,
   so the bracket becomes [probe a-1, probe a) (a = NP: [the top, hi)), about NP - 1 times narrower.
2. if the bracket now holds at most NWIN tokens, gathers them: its chunk's share at an offset given by the
   per-chunk counts (a fixed order, so the window is deterministic);
3. else counts tokens and mass at or above the new probes in its chunk, for the next round.
Round ROUNDS only merges and gathers; a row still too wide (huge ties, or more rounds needed) is left to the
exact sequential draw of sampling_threshold.general_row. Phases per row: 0 bracket set, 1 partials written,
2 window gathered, 3 left to general_row, 4 finished earlier (not pending).
The draw works on the rows in phase 2: sorts the window (walk_window) for v*, applies min-p, and scans its
chunks for the Gumbel-max winner among z >= thr (the plain path's scan). The last stage merges: it picks each
drawn row's winner, and general_row draws the rows left over (one program each).
State buffers are double: round r reads one and writes the other, as other programs may still be reading the
state of the previous round (program 0 carries the other rows' state over); counts slot `fin` says which
buffer holds the final state. Without a cooperative launch (the interpreter, or COOPERATIVE = 0) each stage
is a launch of its own, on the same kernel.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritium.autotune import next_pow2
from tritium.kernels import sampling_threshold as th
from tritium.kernels.sampling import merge_row
from tritium.kernels.sampling_items import (PHASE_DONE, coresident_programs, grid_sync, item_chunks, items_per_row,
                                            phases, programs, rows_in_phase, selected_row)
from tritium.kernels.sampling_stages import draw_item, round_item
from tritium.kernels.sampling_threshold import general_row
from tritium.platform import INTERPRET

NPROBES = 8  # probes per round: the bracket narrows ~7x per round (16 probes cost ~2x as much per round)
ROUNDS = 4  # rounds that probe; then one more that only merges and gathers
COUNT_SLOTS = 16  # >= ROUNDS + 5: rows pending at each round, rows to draw, rows left over, sync counter, fin
COOPERATIVE = 1  # 1: every stage in one cooperative launch; 0: one launch per stage (as under the interpreter)
ROUND_CHUNK = 2048  # tokens per work item of the rounds and the draw (74 items for a 151,936 row)
PROBE_GROUP = 4  # probes compared at once: [PROBE_GROUP, ROUND_CHUNK] per step
ROUND_WARPS = 4
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


# S0 = 1 as a constexpr would break the loop-carried stage r; and variants must not depend on step sizes
# (autotune.SPECIALIZATION)
@triton.jit(do_not_specialize=["S0", "S1", "B"],
            do_not_specialize_on_alignment=["temp_ptr", "seed_ptr", "step_ptr", "topk_ptr", "topp_ptr", "minp_ptr"])
def _bracket_kernel(
    logits_ptr,  # [B, V] fp32/bf16/fp16
    stride_row,
    temp_ptr, seed_ptr, step_ptr,  # [B] fp32, int64, int64
    topk_ptr, topp_ptr, minp_ptr,  # [B] int32, fp32, fp32
    row_f_ptr,  # [B, 3] fp32: max z, sum exp(z - max), min finite z
    bf_ptr, bi_ptr,  # [2, B, 4] fp32 (lo, hi, m_hi, -), int32 (phase, n_hi, n_win, -): double-buffered state
    cnt_ptr, mass_ptr,  # [2, B, C, NP] int32, fp32: counts and masses at each round's probes, double-buffered
    win_ptr,  # [B, NWIN] fp32: the windows
    part_f_ptr, part_i_ptr,  # [B, C, 3] fp32, [B, C] int32: the draw's chunk partials
    out_ptr, lp_ptr,  # [B] int64, fp32 out: token, logprob (if LOGPROBS)
    state_ptr,  # [B] int32 out: 2 for the rows general_row draws
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
        i_f = bf_ptr + r % 2 * B * 4
        i_i = bi_ptr + r % 2 * B * 4
        o_f = bf_ptr + (r + 1) % 2 * B * 4
        o_i = bi_ptr + (r + 1) % 2 * B * 4
        # program 0 carries the rows not pending over into the other buffer (fetched beside the phases)
        ph = phases(i_i, B, BPAD)
        rows = tl.arange(0, BPAD)
        e = rows[:, None] * 4 + tl.arange(0, 4)[None, :]
        first = (rows < B)[:, None] & (pid == 0)
        old_f = tl.load(i_f + e, mask=first)
        old_i = tl.load(i_i + e, mask=first)
        if pid == 0:
            tl.store(fin_ptr, (r + 1) % 2)  # the buffer the final state is in
        if pid < n_count * C:  # (a bound on the items that only grows with the count)
            rows, sel, rank, n = rows_in_phase(ph, 0, 1, BPAD)
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
    f_f = bf_ptr + fin * B * 4
    f_i = bi_ptr + fin * B * 4
    if (S0 <= DRAW) & (S1 >= DRAW) & (n_draw > 0):
        rows, sel, rank, n = rows_in_phase(phases(f_i, B, BPAD), 2, 2, BPAD)
        per_row, g = items_per_row(n, C)
        for item in range(pid, n * per_row, nprog):
            row, c0, c1 = item_chunks(rows, sel, rank, item, per_row, g, C)
            draw_item(logits_ptr, stride_row, temp_ptr, seed_ptr, step_ptr, topk_ptr, topp_ptr, minp_ptr, row_f_ptr,
                      f_f, f_i, win_ptr, part_f_ptr, part_i_ptr, row, c0, c1, V, C, HAS_K, HAS_P, HAS_MINP, LOGPROBS,
                      CHUNK, BLOCK, NWIN, NSMALL)
        if S1 > DRAW:
            syncs += 1
            grid_sync(sync_ptr, syncs * nprog)
    n_left = tl.load(left_count, volatile=True)
    if (S1 > DRAW) & ((n_draw > 0) | (n_left > 0)):
        ph = phases(f_i, B, BPAD)
        if n_draw > 0:  # the merge: each drawn row's winner of its chunk winners
            rows, sel, rank, n = rows_in_phase(ph, 2, 2, BPAD)
            for j in range(pid, n, nprog):
                row = selected_row(rows, sel, rank, j)
                merge_row(part_f_ptr, part_i_ptr, logits_ptr, stride_row, temp_ptr, out_ptr, lp_ptr, row, C,
                          LOGPROBS, CPAD)
        if n_left > 0:  # rows the rounds left over: one program each, from the last programs down
            rows, sel, rank, n = rows_in_phase(ph, 3, 3, BPAD)
            for j in range(nprog - 1 - pid, n, nprog):
                row = selected_row(rows, sel, rank, j)
                general_row(logits_ptr, stride_row, temp_ptr, seed_ptr, step_ptr, topk_ptr, topp_ptr, minp_ptr,
                            row_f_ptr, state_ptr, win_ptr, out_ptr, lp_ptr, row, V, max_rounds, HAS_K, HAS_P,
                            HAS_MINP, LOGPROBS, NWIN, GNP, GBLOCK)


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
    """Bracket rounds, draw and merge for rows in phase 0 (pending), and general_row for the rows left over.
    filt: the (top_k, top_p, min_p) tensors (dummies where off); flags: HAS_K, HAS_P, HAS_MINP, LOGPROBS;
    counts [COUNT_SLOTS] int32: the rows pending at round 0 in counts[0], the rest zero; win [B, NWIN] fp32
    scratch; lp: logprobs out (a dummy without LOGPROBS)."""
    B, V = logits.shape
    dev = logits.device
    chunk = min(ROUND_CHUNK, next_pow2(V))
    C = -(-V // chunk)
    assert counts.numel() >= ROUNDS + 5, "COUNT_SLOTS must cover the rounds, the draw, the rows left, sync and fin"
    cnt = torch.empty((2, B, C, NPROBES), dtype=torch.int32, device=dev)
    mass = torch.empty((2, B, C, NPROBES), dtype=torch.float32, device=dev)
    part_f = torch.empty((B, C, 3), dtype=torch.float32, device=dev)
    part_i = torch.empty((B, C), dtype=torch.int32, device=dev)
    args = (logits, logits.stride(0), temperature, seeds, offsets, *filt, row_f, bf, bi, cnt, mass, win, part_f, part_i,
            out, lp, state, counts)
    meta = dict(**flags, ROUNDS=ROUNDS, CHUNK=chunk, NP=NPROBES, PG=PROBE_GROUP, CPAD=next_pow2(C), NWIN=win.shape[1],
                BPAD=next_pow2(B), BLOCK=max(4, min(DRAW_BLOCK, chunk)), NSMALL=min(DRAW_SMALL, win.shape[1]),
                GNP=th.NPROBE, GBLOCK=th.GENERAL_BLOCK, num_warps=ROUND_WARPS)
    merge = ROUNDS + 2
    n = programs(dev, B * C) if INTERPRET or not COOPERATIVE else min(B * C, _coresident(dev, args, B, V, C, meta))
    if COOPERATIVE and (not INTERPRET or n == 1):  # (the interpreter runs programs one after another)
        _bracket_kernel[(n,)](*args, 0, merge, B, V, C, th.MAX_ROUNDS, **meta, launch_cooperative_grid=True)
    else:
        for stage in range(merge + 1):
            _bracket_kernel[(n,)](*args, stage, stage, B, V, C, th.MAX_ROUNDS, **meta)


_CORESIDENT = {}  # (device, how Triton specializes the arguments, constexprs) -> programs of a cooperative launch


def _specialization(values) -> tuple:
    """What Triton compiles a launch for, beyond the constexprs: tensor dtypes and 16-byte alignment, ints equal
    to 1 or divisible by 16."""
    return tuple((v.dtype, v.data_ptr() % 16 == 0) if isinstance(v, torch.Tensor) else
                 (v == 1, v % 16 == 0) if isinstance(v, int) else None for v in values)


def _coresident(dev, args, B, V, C, meta) -> int:
    key = (str(dev), _specialization((*args, B, V, C)), tuple(sorted(meta.items())))
    if key not in _CORESIDENT:
        compiled = _bracket_kernel.warmup(*args, 0, 1, B, V, C, th.MAX_ROUNDS, **meta, launch_cooperative_grid=True,
                                          grid=(1,))
        _CORESIDENT[key] = coresident_programs(compiled, dev)
    return _CORESIDENT[key]
