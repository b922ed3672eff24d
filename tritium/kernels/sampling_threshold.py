"""Exact thresholds of top-k / top-p / min-p (semantics in sampling_filter.py; keep_mask_ref: the reference),
and the sequential sampling kernel: the exact last resort for rows neither the candidate window of
sampling_filter nor the parallel rounds of sampling_bracket settle (e.g. ties wider than a window).

The predicate: top-k / top-p hold at a value v when count(z >= v) >= k or mass(z >= v) >= p * sum(exp z);
v* is the largest present value where it holds (the min if it never does: keep all); min-p raises the
threshold to max z + log(min_p). Kept tokens: z >= thr. settle_window: v* from a gathered window and the
draw among its kept tokens (sampling_filter's finishing kernel).

general_row, one program's draw of one row (sampling_bracket's last stage, for the rows left over): rounds of
NP probes spread over a bracket [lo, hi] of present values holding v* count tokens and mass at or above each
probe (one read of the row each); the bracket shrinks to the present values around the crossing until it
holds at most NWIN tokens (or one value); those are gathered and walked exactly (sorted). A last read draws
among z >= thr with the plain path's scan. Slower than the candidate path: several reads of the row by one
program, about log_NP(range / spacing near v*) rounds.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritium.kernels.gumbel import NEG, noisy_scores, scan_chunk

NPROBE = 8  # probes per bracketing round
GENERAL_BLOCK = 512
MAX_ROUNDS = 64  # a bound only: each round lowers hi to a smaller present value, by ~NP x in width


@triton.jit
def row_params(temp_ptr, topk_ptr, topp_ptr, minp_ptr, row, HAS_K: tl.constexpr, HAS_P: tl.constexpr,
               HAS_MINP: tl.constexpr):
    # a row's temperature and filters; a filter tensor not given reads as off
    t = tl.load(temp_ptr + row)
    k = tl.load(topk_ptr + row) if HAS_K else tl.full([], 0, tl.int32)
    p = tl.load(topp_ptr + row) if HAS_P else tl.full([], 1.0, tl.float32)
    mp = tl.load(minp_ptr + row) if HAS_MINP else tl.full([], 0.0, tl.float32)
    return t, k, p, mp


@triton.jit
def predicate_bounds(k, p, V, total):
    # top-k / top-p hold at v when count(z >= v) >= k_on or mass(z >= v) >= mass_on (off: unreachable).
    # Scalars, not scalar & vector masks: the interpreter mis-broadcasts scalar booleans.
    return tl.where(k > 0, tl.minimum(k, V), 2147483647), tl.where(p < 1.0, p * total, float("inf"))


@triton.jit
def walk_values(zv, n, base_cnt, base_mass, big, k_on, mass_on, NWIN: tl.constexpr):
    """v*: the largest of the n values in zv [NWIN] (the rest NEG) at which the predicate holds, counting
    base_cnt tokens (mass base_mass) above all of them; -inf if none. The values sorted in descending order give
    count and mass at or above the i-th one as i + 1 and a cumulative sum; ties after it only add to both,
    so the first i where the predicate holds is v* exactly."""
    w = tl.arange(0, NWIN)
    zs = tl.sort(zv, descending=True)
    mass = base_mass + tl.cumsum(tl.where(w < n, tl.exp(zs - big), 0.0), 0)
    holds = (w < n) & ((base_cnt + w + 1 >= k_on) | (mass >= mass_on))
    return tl.max(tl.where(holds, zs, float("-inf")))


@triton.jit
def walk_window(win_ptr, n_win, base_cnt, base_mass, big, k_on, mass_on, NWIN: tl.constexpr, NSMALL: tl.constexpr):
    """walk_values over the n_win values in win_ptr[:NWIN]. The slots are read whole (those past n_win masked
    after), so the read need not wait for n_win; a window of at most NSMALL <= NWIN values is sorted on a
    tile that wide (sorting 512 slots costs ~3 us on an H200)."""
    w_all = tl.load(win_ptr + tl.arange(0, NWIN))
    w_small = tl.load(win_ptr + tl.arange(0, NSMALL))
    if n_win <= NSMALL:
        vstar = walk_values(tl.where(tl.arange(0, NSMALL) < n_win, w_small, NEG), n_win, base_cnt, base_mass, big,
                            k_on, mass_on, NSMALL)
    else:
        vstar = walk_values(tl.where(tl.arange(0, NWIN) < n_win, w_all, NEG), n_win, base_cnt, base_mass, big, k_on,
                            mass_on, NWIN)
    return vstar


@triton.jit
def threshold(vstar, k, p, mp, big):
    # kept: z >= thr (v* from top-k / top-p, raised by min-p; never above the max)
    thr = tl.where((k > 0) | (p < 1.0), vstar, float("-inf"))
    thr = tl.maximum(thr, tl.where(mp > 0, big + tl.log(tl.where(mp > 0, mp, 1.0)), float("-inf")))
    return tl.minimum(thr, big)


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
def general_row(
    logits_ptr,  # [B, V] fp32/bf16/fp16
    stride_row,
    temp_ptr, seed_ptr, step_ptr,  # [B] fp32, int64, int64
    topk_ptr, topp_ptr, minp_ptr,  # [B] int32, fp32, fp32
    row_f_ptr,  # [B, 3] fp32: max z, sum exp(z - max), (min z)
    state_ptr,  # [B] int32 out: 2 for the rows drawn here
    win_ptr,  # [B, NWIN] fp32 scratch
    out_ptr,  # [B] int64 out
    lp_ptr,  # [B] fp32 out (if LOGPROBS)
    row, V, max_rounds,
    HAS_K: tl.constexpr, HAS_P: tl.constexpr, HAS_MINP: tl.constexpr, LOGPROBS: tl.constexpr,
    NWIN: tl.constexpr, NP: tl.constexpr, BLOCK: tl.constexpr,
):
    tl.store(state_ptr + row, 2)
    t, k, p, mp = row_params(temp_ptr, topk_ptr, topp_ptr, minp_ptr, row, HAS_K, HAS_P, HAS_MINP)
    sampled = t > 0
    inv_t = 1.0 / tl.where(sampled, t, 1.0)
    big = tl.load(row_f_ptr + row * 3)
    k_on, mass_on = predicate_bounds(k, p, V, tl.load(row_f_ptr + row * 3 + 1))
    row_ptr = logits_ptr + row * stride_row
    # bracket [lo, hi] of present values holding v*; n_lo tokens at or above lo, n_hi (mass m_hi) above hi
    lo = tl.full([BLOCK], float("inf"), tl.float32)
    for off in range(0, V, BLOCK):
        o = off + tl.arange(0, BLOCK)
        lo = tl.minimum(lo, tl.where(o < V, tl.load(row_ptr + o, mask=o < V, other=0.0).to(tl.float32), float("inf")))
    lo = tl.maximum(tl.min(lo) * inv_t, NEG)  # the min: v* >= it (keep all if the predicate never holds)
    hi = big
    n_lo = V
    n_hi = 0
    m_hi = 0.0
    j = tl.arange(0, NP)
    kp = (k > 0) | (p < 1.0)
    rounds = 0
    while kp & (hi > lo) & (n_lo - n_hi > NWIN) & (rounds < max_rounds):
        probe = tl.where(j == NP - 1, hi, lo + (hi - lo) * ((j + 1).to(tl.float32) / NP))
        cnt = tl.zeros([NP], tl.int32)
        mass = tl.zeros([NP], tl.float32)
        lo_next = tl.full([NP], float("inf"), tl.float32)  # min z >= probe
        hi_next = tl.full([NP], float("-inf"), tl.float32)  # max z < probe
        for off in range(0, V, BLOCK):
            o = off + tl.arange(0, BLOCK)
            mk = (o < V)[None, :]
            z = tl.maximum(tl.load(row_ptr + o, mask=o < V, other=0.0).to(tl.float32) * inv_t, NEG)[None, :]
            ge = mk & (z >= probe[:, None])
            cnt += tl.sum(ge.to(tl.int32), 1)
            mass += tl.sum(tl.where(ge, tl.exp(z - big), 0.0), 1)
            lo_next = tl.minimum(lo_next, tl.min(tl.where(ge, z, float("inf")), 1))
            hi_next = tl.maximum(hi_next, tl.max(tl.where(mk & (z < probe[:, None]), z, float("-inf")), 1))
        # the predicate falls with the probe: probes [0, a) hold it, [a, NP) do not
        a = tl.sum(((cnt >= k_on) | (mass >= mass_on)).to(tl.int32))
        lo = tl.where(a > 0, tl.max(tl.where(j == a - 1, lo_next, float("-inf"))), lo)
        n_lo = tl.where(a > 0, tl.max(tl.where(j == a - 1, cnt, 0)), n_lo)
        hi = tl.where(a == NP, lo, tl.max(tl.where(j == a, hi_next, float("-inf"))))  # a == NP: v* = hi
        n_hi = tl.where(a == NP, n_hi, tl.max(tl.where(j == a, cnt, 0)))
        m_hi = tl.where(a == NP, m_hi, tl.max(tl.where(j == a, mass, 0.0)))
        rounds += 1
    vstar = lo
    if kp & (hi > lo):  # at most NWIN tokens in [lo, hi]: gather them and walk them exactly
        base = 0
        for off in range(0, V, BLOCK):
            o = off + tl.arange(0, BLOCK)
            z = tl.maximum(tl.load(row_ptr + o, mask=o < V, other=0.0).to(tl.float32) * inv_t, NEG)
            sel = (o < V) & (z >= lo) & (z <= hi)
            pos = base + tl.cumsum(sel.to(tl.int32), 0) - 1
            tl.store(win_ptr + row * NWIN + pos, z, mask=sel & (pos < NWIN))
            base += tl.sum(sel.to(tl.int32))
        tl.debug_barrier()  # the window was written by other threads of this program
        n_win = tl.minimum(base, NWIN)
        vstar = tl.maximum(walk_window(win_ptr + row * NWIN, n_win, n_hi, m_hi, big, k_on, mass_on, NWIN, NWIN), lo)
    thr = threshold(vstar, k, p, mp, big)
    # draw among z >= thr (the plain path's scan with a threshold)
    _, tok, m, s = scan_chunk(row_ptr, 0, V, inv_t, sampled, tl.load(seed_ptr + row), tl.load(step_ptr + row), thr,
                              LOGPROBS, True, BLOCK)
    tl.store(out_ptr + row, tok.to(tl.int64))
    if LOGPROBS:
        z = tl.load(row_ptr + tok).to(tl.float32) * inv_t
        tl.store(lp_ptr + row, z - m - tl.log(s))


def keep_mask_ref(z, top_k=None, top_p=None, min_p=None):
    """[B, V] bool: the kept set of scaled logits z (fp32). Joint filters on the unfiltered distribution:
    top-k keeps z >= the k-th largest value; top-p keeps the smallest top set whose mass >= p (ties with
    its last value included); min-p keeps p_i >= min_p * max p; a token is kept if every active filter
    keeps it."""
    B, V = z.shape
    probs = torch.softmax(z, dim=-1)
    zs, order = z.sort(dim=-1, descending=True, stable=True)
    hit = torch.zeros_like(z, dtype=torch.bool)
    if top_k is not None:
        k = top_k.long().clamp(max=V)[:, None]
        hit |= (k > 0) & (torch.arange(1, V + 1, device=z.device)[None, :] >= k)
    if top_p is not None:
        hit |= (top_p[:, None] < 1) & (probs.gather(-1, order).cumsum(-1) >= top_p[:, None])
    first = hit.float().argmax(-1, keepdim=True)
    vstar = torch.where(hit.any(-1, keepdim=True), zs.gather(-1, first), float("-inf"))
    keep = z >= vstar
    if min_p is not None:
        keep &= (min_p[:, None] <= 0) | (probs >= min_p[:, None] * probs.amax(-1, keepdim=True))
    return keep
