"""Top-k / top-p thresholds of rows the candidate window did not settle, found in parallel over the vocabulary.

Semantics as in sampling_filter.py: v* is the largest present value v of z = logits / T where the predicate
holds: count(z >= v) >= k_on or mass(z >= v) >= mass_on (both fall as v rises).

A pending row keeps a bracket [lo, hi): the predicate holds at lo and fails at hi (hi = +inf at first, lo the
row's smallest finite z), with n_hi tokens of mass m_hi at or above hi. Each round is one launch over
grid (B, C), a CHUNK of the row per program, so a pending row costs about one parallel read per round:
1. merge the previous round: sum its per-chunk counts and masses at NP probes, spread evenly over
   [lo, min(hi, max z)] (the first at lo, the last at the top); the predicate holds at the first a probes,
   so the bracket becomes [probe a-1, probe a) (a = NP: [the top, hi)), about NP - 1 times narrower.
2. if the bracket now holds at most NWIN tokens, gather them: each program writes its chunk's share at an
   offset given by the per-chunk counts (a fixed order, so the window is deterministic);
3. else count tokens and mass at or above the new probes in the chunk, for the next round.
The last launch only merges and gathers; a row still too wide (huge ties, or more rounds needed) is left
to the exact sequential kernel of sampling_threshold.py. Phases per row: 0 bracket set, 1 partials
written, 2 window gathered, 3 left to the sequential kernel, 4 finished earlier (not pending).
Then _bracket_draw_kernel, grid (B, C): sorts the window (walk_window) for v*, applies min-p, and scans its
chunk for the Gumbel-max winner among z >= thr (the plain path's scan); sampling's merge kernel picks the
row's winner. Rows of other phases return at once, so a batch without pending rows pays only launches.
State buffers are double: round r reads one and writes the other, as other programs of the same launch
may still be reading the state of the previous round.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritium.autotune import next_pow2
from tritium.kernels import sampling_threshold as th
from tritium.kernels.gumbel import scan_chunk
from tritium.kernels.sampling import _sample_merge_kernel
from tritium.kernels.sampling_threshold import predicate_bounds, row_params, threshold, walk_window

NPROBES = 16  # probes per round: the bracket narrows ~15x per round
ROUNDS = 3  # rounds that probe; then one more launch that only merges and gathers
ROUND_BLOCK = 256  # tokens per loop step of a round ([NPROBES, ROUND_BLOCK] compares)
ROUND_WARPS = 4
DRAW_BLOCK = 1024  # tokens per loop step of the draw
PHASE_DONE = tl.constexpr(4)  # rows finished by the candidate window (written by the finishing kernel)


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
def _probes(lo, hi, big, NP: tl.constexpr):
    # NP probes from lo to top = min(hi, max z), the first exactly lo and the last exactly top
    top = tl.minimum(hi, big)
    j = tl.arange(0, NP)
    q = tl.minimum(lo + (top - lo) * (j.to(tl.float32) / (NP - 1)), top)
    return tl.where(j == NP - 1, top, q)


@triton.jit
def _bracket_round_kernel(
    logits_ptr,  # [B, V] fp32/bf16/fp16
    stride_row,
    temp_ptr, topk_ptr, topp_ptr, minp_ptr,  # [B] fp32, int32, fp32, fp32
    row_f_ptr,  # [B, 3] fp32: max z, sum exp(z - max), min finite z
    state_ptr,  # [B] int32: 1 pending (the others return at once)
    bf_in_ptr, bi_in_ptr,  # [B, 4] fp32 (lo, hi, m_hi, -), int32 (phase, n_hi, n_win, -): previous round
    bf_out_ptr, bi_out_ptr,  # the same, written by program 0 of each row
    cnt_in_ptr, mass_in_ptr,  # [B, C, NP] int32, fp32: the previous round's counts and masses at its probes
    cnt_out_ptr, mass_out_ptr,  # [B, C, NP] this round's
    win_ptr,  # [B, NWIN] fp32 out: the window
    V, C,
    HAS_K: tl.constexpr, HAS_P: tl.constexpr, HAS_MINP: tl.constexpr,
    LAST: tl.constexpr,  # merge and gather only
    CHUNK: tl.constexpr, BLOCK: tl.constexpr, NP: tl.constexpr, CPAD: tl.constexpr, NWIN: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    if tl.load(state_ptr + row) == 0:
        return
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
    row_ptr = logits_ptr + row * stride_row
    start = c * CHUNK
    end = tl.minimum(start + CHUNK, V)
    j = tl.arange(0, NP)
    if ph == 1:
        q = _probes(lo, hi, big, NP)
        cc = tl.arange(0, CPAD)[:, None]
        part = (row * C + cc) * NP + j[None, :]
        cnt = tl.load(cnt_in_ptr + part, mask=cc < C, other=0)  # [CPAD, NP]
        tc = tl.sum(cnt, 0)
        tm = tl.sum(tl.load(mass_in_ptr + part, mask=cc < C, other=0.0), 0)
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
            if inner:  # gather: this chunk's tokens in [lo, hi), after those of earlier chunks
                per = tl.sum(tl.where(j[None, :] == a - 1, cnt, 0), 1) - tl.sum(tl.where(j[None, :] == a, cnt, 0), 1)
                base = tl.sum(tl.where(tl.arange(0, CPAD) < c, per, 0))
                for off in range(start, end, BLOCK):
                    o = off + tl.arange(0, BLOCK)
                    z = tl.load(row_ptr + o, mask=o < end, other=0.0).to(tl.float32) * inv_t
                    sel = (o < end) & (z >= lo) & (z < hi)
                    pos = base + tl.cumsum(sel.to(tl.int32), 0) - 1
                    tl.store(win_ptr + row * NWIN + pos, z, mask=sel & (pos < NWIN))
                    base += tl.sum(sel.to(tl.int32))
            ph = 2
    if (ph < 2) & (k <= 0) & (p >= 1.0):  # min-p alone needs no v*
        ph = 2
    if ph < 2:
        if LAST:
            ph = 3
        else:  # count tokens and mass at or above each new probe in this chunk
            q = _probes(lo, hi, big, NP)
            cnt = tl.zeros([NP, BLOCK], tl.int32)
            mass = tl.zeros([NP, BLOCK], tl.float32)
            for off in range(start, end, BLOCK):
                o = off + tl.arange(0, BLOCK)
                z = tl.load(row_ptr + o, mask=o < end, other=0.0).to(tl.float32) * inv_t
                z = tl.where(o < end, z, float("-inf"))[None, :]
                ge = z >= q[:, None]
                cnt += ge.to(tl.int32)
                mass += tl.where(ge, tl.exp(z - big), 0.0)
            out = (row * C + c) * NP + j
            tl.store(cnt_out_ptr + out, tl.sum(cnt, 1))
            tl.store(mass_out_ptr + out, tl.sum(mass, 1))
            ph = 1
    if c == 0:
        tl.store(bf_out_ptr + row * 4, lo)
        tl.store(bf_out_ptr + row * 4 + 1, hi)
        tl.store(bf_out_ptr + row * 4 + 2, m_hi)
        tl.store(bi_out_ptr + row * 4, ph)
        tl.store(bi_out_ptr + row * 4 + 1, n_hi)
        tl.store(bi_out_ptr + row * 4 + 2, n_win)


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
    V,
    HAS_K: tl.constexpr, HAS_P: tl.constexpr, HAS_MINP: tl.constexpr, LOGPROBS: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK: tl.constexpr, NWIN: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    if tl.load(bi_ptr + row * 4) != 2:
        return
    t, k, p, mp = row_params(temp_ptr, topk_ptr, topp_ptr, minp_ptr, row, HAS_K, HAS_P, HAS_MINP)
    big = tl.load(row_f_ptr + row * 3)
    k_on, mass_on = predicate_bounds(k, p, V, tl.load(row_f_ptr + row * 3 + 1))
    lo = tl.load(bf_ptr + row * 4)
    vstar = walk_window(win_ptr + row * NWIN, tl.load(bi_ptr + row * 4 + 2), tl.load(bi_ptr + row * 4 + 1),
                        tl.load(bf_ptr + row * 4 + 2), big, k_on, mass_on, NWIN)
    thr = threshold(tl.maximum(vstar, lo), k, p, mp, big)
    sampled = t > 0
    end = tl.minimum(c * CHUNK + CHUNK, V)
    win, tok, m, s = scan_chunk(logits_ptr + row * stride_row, c * CHUNK, end, 1.0 / tl.where(sampled, t, 1.0),
                                sampled, tl.load(seed_ptr + row), tl.load(step_ptr + row), thr, LOGPROBS, True,
                                BLOCK)
    slot = row * tl.num_programs(1) + c
    tl.store(part_f_ptr + slot * 3, win)
    tl.store(part_i_ptr + slot, tok)
    if LOGPROBS:
        tl.store(part_f_ptr + slot * 3 + 1, m)
        tl.store(part_f_ptr + slot * 3 + 2, s)


def reset_brackets(state, row_f, bf, bi) -> None:
    """Make every row pending with a fresh bracket (tests: the bracket path on rows the window settles)."""
    state.fill_(1)
    bi.zero_()
    bf[0, :, 0] = row_f[:, 2]
    bf[0, :, 1] = float("inf")
    bf[0, :, 2] = 0.0


def draw_pending(logits, temperature, seeds, offsets, filt, flags, row_f, state, bf, bi, win, out, lp, chunk):
    """Bracket rounds, draw and merge for rows with state 1, then the sequential kernel for the rows left
    over. filt: the (top_k, top_p, min_p) tensors (dummies where off); flags: HAS_K, HAS_P, HAS_MINP,
    LOGPROBS; win [B, NWIN] fp32 scratch; lp: logprobs out (a dummy without LOGPROBS)."""
    B, V = logits.shape
    C = -(-V // chunk)
    nwin = win.shape[1]
    has = {k: flags[k] for k in ("HAS_K", "HAS_P", "HAS_MINP")}
    cnt = torch.empty((2, B, C, NPROBES), dtype=torch.int32, device=logits.device)
    mass = torch.empty((2, B, C, NPROBES), dtype=torch.float32, device=logits.device)
    for r in range(ROUNDS + 1):
        i, o = r % 2, (r + 1) % 2
        _bracket_round_kernel[(B, C)](
            logits, logits.stride(0), temperature, *filt, row_f, state, bf[i], bi[i], bf[o], bi[o], cnt[i], mass[i],
            cnt[o], mass[o], win, V, C, **has, LAST=r == ROUNDS, CHUNK=chunk, BLOCK=ROUND_BLOCK, NP=NPROBES,
            CPAD=next_pow2(C), NWIN=nwin, num_warps=ROUND_WARPS)
    fin = (ROUNDS + 1) % 2
    part_f = torch.empty((B, C, 3), dtype=torch.float32, device=logits.device)
    part_i = torch.empty((B, C), dtype=torch.int32, device=logits.device)
    _bracket_draw_kernel[(B, C)](logits, logits.stride(0), temperature, seeds, offsets, *filt, row_f, bf[fin], bi[fin],
                                 win, part_f, part_i, V, **flags, CHUNK=chunk, BLOCK=min(DRAW_BLOCK, chunk), NWIN=nwin,
                                 num_warps=4)
    _sample_merge_kernel[(B,)](part_f, part_i, logits, logits.stride(0), temperature, out, lp, C,
                               STATS=flags["LOGPROBS"], CPAD=next_pow2(C), gate_ptr=bi[fin], GATE=2)
    th._filter_general_kernel[(B,)](logits, logits.stride(0), temperature, seeds, offsets, *filt, row_f, bi[fin],
                                    state, win, out, lp, V, th.MAX_ROUNDS, **flags, NWIN=nwin, NP=th.NPROBE,
                                    BLOCK=th.GENERAL_BLOCK, num_warps=8)
