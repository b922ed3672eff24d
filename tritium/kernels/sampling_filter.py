"""Sampling with top-k / top-p / min-p: exact kept sets without sorting the vocabulary.

Semantics (joint, all on the unfiltered distribution p = softmax(z) of a row, z = logits / T):
    top-k (k > 0):  keep z >= v_k, v_k = the k-th largest z (ties with it kept; k > V keeps all)
    top-p (p < 1):  keep z >= v_p, v_p = the largest value v with mass(z >= v) >= p (the smallest set of top
                    tokens whose mass reaches p, ties with its last value kept)
    min-p (> 0):    keep p_i >= min_p * max p, i.e. z >= max z + log(min_p)
    kept = the intersection, i.e. z >= max(v_k, v_p, min-p threshold); then Gumbel-max over it.
top-k and top-p share one predicate: v* = max(v_k, v_p) is the largest present value v with
count(z >= v) >= k or mass(z >= v) >= p * sum(exp z).

Three launches (all CUDA-graph safe: fixed grids, no host sync):
1. _filter_partial_kernel, grid (B, C): one [CHUNK] slice per program, read once. Writes the unfiltered
   winner (used by rows without filters), (max, sum exp, min) of z, and the chunk's candidates: every token
   with z >= chunk max - D, D the largest of {16, 8, ..., 0.5, 0} that yields <= CAPC tokens. All tokens
   of the row with z >= F = max over chunks of (chunk max - D) are thus candidates.
2. _filter_finish_kernel, grid (B,): merges; sorts the <= C * CAPC candidates, walks them from the top
   (cumulative count and mass) to find v*. If the kept set lies inside z >= F (the usual case: peaked
   LLM distributions), draws among the kept candidates (their noise recomputed from the token ids) and
   writes the token; otherwise marks the row pending.
3. _filter_general_kernel, grid (B,): pending rows only (others return at once). One program reads its
   row in rounds: NP probes in the value bracket [lo, hi] count tokens and mass at or above each probe;
   the bracket shrinks to the present values around the crossing until lo == hi = v*. Then one more read
   draws among the kept tokens. Exact; slower (several reads of the row by one program).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritium.autotune import next_pow2, tuned
from tritium.kernels.sampling import NEG, noisy_scores, scan_block

# The chunk (CHUNK = min(FILTER_CHUNK, next_pow2(V)) tokens per program) is fixed by V alone, so sums and
# candidate sets, and with them every draw, do not depend on the batch or the config.
FILTER_CONFIGS = [triton.Config({}, num_warps=8), triton.Config({}, num_warps=16)]
FILTER_CHUNK = 2048
CAPC = 16  # candidates kept per chunk
DMAX = 16.0  # widest candidate window below the (chunk or row) max: exp(-16) ~ 1e-7 of the max probability
NSCHED = 7  # chunk windows tried: 0, DMAX / 2**5, ..., DMAX / 2, DMAX
NWIN = 256  # most candidates of a row the finishing kernel walks (count and mass by pairwise comparison)
NRSCHED = 9  # row windows tried: 0, DMAX * 2**(-7/2), ..., DMAX * 2**(-1/2), DMAX
WB = 16  # window columns per step of the pairwise walk
NPROBE = 8  # probes per bracketing round of the general kernel
GENERAL_BLOCK = 512
MAX_ROUNDS = 64  # a bound only: each round lowers hi to a smaller present value, by ~NP x in width


@triton.jit
def _filter_partial_kernel(
    logits_ptr,  # [B, V] fp32/bf16/fp16, last dim contiguous
    stride_row,  # elements between rows
    temp_ptr,  # [B] fp32
    seed_ptr,  # [B] int64
    step_ptr,  # [B] int64
    part_f_ptr,  # [B, C, 5] fp32 out: best score, max z, sum exp(z - max), min z, floor F_c
    part_i_ptr,  # [B, C, 2] int32 out: best token, number of candidates
    cand_z_ptr,  # [B, C, CAPC] fp32 out: candidate z
    cand_i_ptr,  # [B, C, CAPC] int32 out: candidate token
    V,  # vocabulary size
    CAPC: tl.constexpr,
    DMAX: tl.constexpr,
    NSCHED: tl.constexpr,
    CHUNK: tl.constexpr,  # tokens per program (power of two >= 4)
):
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    slot = row * tl.num_programs(1) + c
    G: tl.constexpr = CHUNK // 4
    t = tl.load(temp_ptr + row)
    sampled = t > 0
    inv_t = 1.0 / tl.where(sampled, t, 1.0)
    tok = c * CHUNK + tl.arange(0, G)[:, None] * 4 + tl.arange(0, 4)[None, :]
    mask = tok < V
    x = tl.load(logits_ptr + row * stride_row + tok, mask=mask, other=0.0).to(tl.float32)
    z = tl.where(mask, tl.maximum(x * inv_t, NEG), NEG)
    if sampled:
        sc = noisy_scores(z, tl.load(seed_ptr + row), tl.load(step_ptr + row), (c * G + tl.arange(0, G))[:, None],
                          tl.arange(0, 4)[None, :])
    else:
        sc = z
    sc = tl.where(mask, sc, float("-inf"))
    best = tl.max(sc)
    m = tl.max(z)
    if CHUNK <= CAPC:
        floor = tl.full([], float("-inf"), tl.float32)  # every token is a candidate
    else:
        # candidate window: the widest D of the schedule with at most CAPC tokens in [m - D, m]
        d_sel = -1.0
        for k in tl.static_range(NSCHED):
            d = 0.0 if k == 0 else DMAX / (2 ** (NSCHED - 1 - k))
            d_sel = tl.where(tl.sum((mask & (z >= m - d)).to(tl.int32)) <= CAPC, d, d_sel)
        floor = tl.where(d_sel >= 0, m - d_sel, float("inf"))  # +inf: too many ties at the max: none
    sel = mask & (z >= floor)
    pos = tl.reshape(tl.cumsum(tl.reshape(sel.to(tl.int32), [CHUNK]), 0), [G, 4]) - 1
    tl.store(cand_z_ptr + slot * CAPC + pos, z, mask=sel)
    tl.store(cand_i_ptr + slot * CAPC + pos, tok, mask=sel)
    out = part_f_ptr + slot * 5
    tl.store(out, best)
    tl.store(out + 1, m)
    tl.store(out + 2, tl.sum(tl.exp(z - m)))
    tl.store(out + 3, tl.min(tl.where(mask, z, float("inf"))))
    tl.store(out + 4, floor)
    tl.store(part_i_ptr + slot * 2, tl.min(tl.where(sc == best, tok, 2147483647)))
    tl.store(part_i_ptr + slot * 2 + 1, tl.max(pos) + 1)


@triton.jit
def _row_params(temp_ptr, topk_ptr, topp_ptr, minp_ptr, row, HAS_K: tl.constexpr, HAS_P: tl.constexpr,
                HAS_MINP: tl.constexpr):
    t = tl.load(temp_ptr + row)
    k = tl.load(topk_ptr + row) if HAS_K else tl.full([], 0, tl.int32)
    p = tl.load(topp_ptr + row) if HAS_P else tl.full([], 1.0, tl.float32)
    mp = tl.load(minp_ptr + row) if HAS_MINP else tl.full([], 0.0, tl.float32)
    return t, k, p, mp


@triton.jit
def _predicate_bounds(k, p, V, total):
    # top-k / top-p hold at v when count(z >= v) >= k_on or mass(z >= v) >= mass_on (off: unreachable).
    # Scalars, not scalar & vector masks: the interpreter mis-broadcasts scalar booleans.
    return tl.where(k > 0, tl.minimum(k, V), 2147483647), tl.where(p < 1.0, p * total, float("inf"))


@triton.jit
def _walk(win_ptr, n_win, base_cnt, base_mass, big, k_on, mass_on, NWIN: tl.constexpr, WB: tl.constexpr):
    """v*: the largest of the n_win values in win_ptr[:NWIN] at which the predicate holds, counting base_cnt
    tokens (mass base_mass) above all of them; -inf if none. Counts by pairwise comparison, WB at a time."""
    w = tl.arange(0, NWIN)
    wz = tl.load(win_ptr + w, mask=w < n_win, other=NEG)
    cnt = tl.zeros([NWIN], tl.int32) + base_cnt
    mass = tl.zeros([NWIN], tl.float32) + base_mass
    for j0 in range(0, NWIN, WB):
        j = j0 + tl.arange(0, WB)
        zj = tl.load(win_ptr + j, mask=j < n_win, other=NEG)
        ge = (j < n_win)[None, :] & (zj[None, :] >= wz[:, None])
        cnt += tl.sum(ge.to(tl.int32), 1)
        mass += tl.sum(tl.where(ge, tl.exp(zj - big)[None, :], 0.0), 1)
    return tl.max(tl.where((w < n_win) & ((cnt >= k_on) | (mass >= mass_on)), wz, float("-inf")))


@triton.jit
def _threshold(vstar, k, p, mp, big):
    # kept: z >= thr (v* from top-k / top-p, raised by min-p; never above the max)
    thr = tl.where((k > 0) | (p < 1.0), vstar, float("-inf"))
    thr = tl.maximum(thr, tl.where(mp > 0, big + tl.log(tl.where(mp > 0, mp, 1.0)), float("-inf")))
    return tl.minimum(thr, big)


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
    row_f_ptr,  # [B, 3] fp32 out: max z, sum exp(z - max), min z (for the general kernel)
    state_ptr,  # [B] int32 out: 0 done, 1 pending
    V, C,
    HAS_K: tl.constexpr, HAS_P: tl.constexpr, HAS_MINP: tl.constexpr, LOGPROBS: tl.constexpr,
    CAPC: tl.constexpr, CPAD: tl.constexpr, NCAND: tl.constexpr,  # CPAD >= C, NCAND >= C * CAPC
    NWIN: tl.constexpr, WB: tl.constexpr, DMAX: tl.constexpr, NRSCHED: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    t, k, p, mp = _row_params(temp_ptr, topk_ptr, topp_ptr, minp_ptr, row, HAS_K, HAS_P, HAS_MINP)
    c = tl.arange(0, CPAD)
    cm = c < C
    part = part_f_ptr + (row * C + c) * 5
    m = tl.load(part + 1, mask=cm, other=NEG)
    big = tl.max(m)
    total = tl.sum(tl.load(part + 2, mask=cm, other=0.0) * tl.exp(m - big))
    tl.store(row_f_ptr + row * 3, big)
    tl.store(row_f_ptr + row * 3 + 1, total)
    tl.store(row_f_ptr + row * 3 + 2, tl.min(tl.load(part + 3, mask=cm, other=float("inf"))))
    if (k <= 0) & (p >= 1.0) & (mp <= 0):  # no filter on this row: the plain winner
        sc = tl.load(part, mask=cm, other=float("-inf"))
        pick = tl.min(tl.where(cm & (sc == tl.max(sc)), c, CPAD))
        tok = tl.load(part_i_ptr + (row * C + pick) * 2)
        tl.store(out_ptr + row, tok.to(tl.int64))
        if LOGPROBS:
            z = tl.load(logits_ptr + row * stride_row + tok).to(tl.float32) / tl.where(t > 0, t, 1.0)
            tl.store(lp_ptr + row, z - big - tl.log(total))
        tl.store(state_ptr + row, 0)
    else:
        # candidates of all chunks; the row's window: the widest z >= max - D with at most NWIN of them
        s = tl.arange(0, NCAND)
        ch = s // CAPC
        valid = (ch < C) & (s % CAPC < tl.load(part_i_ptr + (row * C + ch) * 2 + 1, mask=ch < C, other=0))
        cz = tl.load(cand_z_ptr + (row * C + ch) * CAPC + s % CAPC, mask=valid, other=NEG)
        # every token with z >= floor is a candidate (chunk floors) and in the window (its own floor)
        floor = tl.max(tl.load(part + 4, mask=cm, other=float("-inf")))
        if NCAND > NWIN:
            d_sel = -1.0
            for i in tl.static_range(NRSCHED):  # D = 0 and DMAX * 2**(-j/2), j = NRSCHED - 2 .. 0
                d = 0.0 if i == 0 else DMAX * 0.5 ** ((NRSCHED - 1 - i) / 2)
                d_sel = tl.where(tl.sum((valid & (cz >= big - d)).to(tl.int32)) <= NWIN, d, d_sel)
            floor = tl.maximum(floor, tl.where(d_sel >= 0, big - d_sel, float("inf")))
        sel = valid & (cz >= floor)
        pos = tl.cumsum(sel.to(tl.int32), 0) - 1
        tl.store(win_z_ptr + row * NWIN + pos, cz, mask=sel)
        tl.store(win_i_ptr + row * NWIN + pos, tl.load(cand_i_ptr + (row * C + ch) * CAPC + s % CAPC, mask=sel),
                 mask=sel)
        tl.debug_barrier()  # the window was written by other threads of this program
        n_win = tl.sum(sel.to(tl.int32))
        k_on, mass_on = _predicate_bounds(k, p, V, total)
        # counts are exact for window values >= floor
        thr = _threshold(_walk(win_z_ptr + row * NWIN, n_win, 0, 0.0, big, k_on, mass_on, NWIN, WB), k, p, mp, big)
        w = tl.arange(0, NWIN)
        wv = w < n_win
        wz = tl.load(win_z_ptr + row * NWIN + w, mask=wv, other=NEG)
        wi = tl.load(win_i_ptr + row * NWIN + w, mask=wv, other=0)
        e = tl.where(wv, tl.exp(wz - big), 0.0)
        # v* computed below the floor may be too low, but then the true one is below the floor too
        done = thr >= floor
        kept = wv & (wz >= thr)
        score = tl.where(t > 0, noisy_scores(wz, tl.load(seed_ptr + row), tl.load(step_ptr + row), wi // 4, wi % 4), wz)
        score = tl.where(kept, score, float("-inf"))
        ftok = tl.min(tl.where(kept & (score == tl.max(score)), wi, 2147483647))
        tl.store(out_ptr + row, ftok.to(tl.int64), mask=done)
        if LOGPROBS:
            fz = tl.max(tl.where(wi == ftok, wz, NEG))
            tl.store(lp_ptr + row, fz - big - tl.log(tl.sum(tl.where(kept, e, 0.0))), mask=done)
        tl.store(state_ptr + row, tl.where(done, 0, 1))


@triton.jit
def _filter_general_kernel(
    logits_ptr,  # [B, V] fp32/bf16/fp16
    stride_row,
    temp_ptr, seed_ptr, step_ptr,  # [B] fp32, int64, int64
    topk_ptr, topp_ptr, minp_ptr,  # [B] int32, fp32, fp32
    row_f_ptr,  # [B, 3] fp32: max z, sum exp(z - max), min z
    state_ptr,  # [B] int32: only rows with 1 are worked on
    win_ptr,  # [B, NWIN] fp32 scratch
    out_ptr,  # [B] int64 out
    lp_ptr,  # [B] fp32 out (if LOGPROBS)
    V, max_rounds,
    HAS_K: tl.constexpr, HAS_P: tl.constexpr, HAS_MINP: tl.constexpr, LOGPROBS: tl.constexpr,
    NWIN: tl.constexpr, WB: tl.constexpr, NP: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    if tl.load(state_ptr + row) == 0:
        return
    t, k, p, mp = _row_params(temp_ptr, topk_ptr, topp_ptr, minp_ptr, row, HAS_K, HAS_P, HAS_MINP)
    sampled = t > 0
    inv_t = 1.0 / tl.where(sampled, t, 1.0)
    big = tl.load(row_f_ptr + row * 3)
    k_on, mass_on = _predicate_bounds(k, p, V, tl.load(row_f_ptr + row * 3 + 1))
    # bracket [lo, hi] of present values holding v*; n_lo tokens at or above lo, n_hi (mass m_hi) above hi
    lo = tl.load(row_f_ptr + row * 3 + 2)  # the min: v* >= it (keep all if the predicate never holds)
    hi = big
    n_lo = V
    n_hi = 0
    m_hi = 0.0
    row_ptr = logits_ptr + row * stride_row
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
        vstar = tl.maximum(_walk(win_ptr + row * NWIN, n_win, n_hi, m_hi, big, k_on, mass_on, NWIN, WB), lo)
    thr = _threshold(vstar, k, p, mp, big)
    # draw among z >= thr (the plain path's scan with a threshold)
    G: tl.constexpr = BLOCK // 4
    seed = tl.load(seed_ptr + row)
    step = tl.load(step_ptr + row)
    tile = tl.arange(0, G)[:, None] * 4 + tl.arange(0, 4)[None, :]
    best_s = tl.full([G, 4], float("-inf"), tl.float32)
    best_o = tl.zeros([G, 4], tl.int32)
    m = tl.full([], NEG, tl.float32)
    s = tl.zeros([], tl.float32)
    for off in range(0, V, BLOCK):
        best_s, best_o, m, s = scan_block(row_ptr, off, tile, V, inv_t, sampled, seed, step, thr, best_s, best_o,
                                          m, s, True, LOGPROBS, True, G)
    tok = tl.min(tl.where(best_s == tl.max(best_s), best_o + tile, 2147483647))
    tl.store(out_ptr + row, tok.to(tl.int64))
    if LOGPROBS:
        z = tl.load(row_ptr + tok).to(tl.float32) * inv_t
        tl.store(lp_ptr + row, z - m - tl.log(s))


_FILTER_PARTIAL = tuned(_filter_partial_kernel, FILTER_CONFIGS, key=["V"])


def filter_chunk(V: int) -> int:
    return min(FILTER_CHUNK, max(4, next_pow2(V)))


def sample_filtered(logits, temperature, seeds, offsets, top_k, top_p, min_p, out, logprobs_out, config=None,
                    state=None, force_general=False):
    """Launch the three kernels (inputs already validated by sampling.sample). `state`, if given ([B]
    int32), receives 0 for rows finished from the candidates, 1 for rows the general kernel drew.
    force_general (tests) sends every row through the general kernel."""
    B, V = logits.shape
    dev = logits.device
    chunk = filter_chunk(V)
    C = -(-V // chunk)
    part_f = torch.empty((B, C, 5), dtype=torch.float32, device=dev)
    part_i = torch.empty((B, C, 2), dtype=torch.int32, device=dev)
    cand_z = torch.empty((B, C, CAPC), dtype=torch.float32, device=dev)
    cand_i = torch.empty((B, C, CAPC), dtype=torch.int32, device=dev)
    ncand = next_pow2(C * CAPC)
    nwin = min(NWIN, ncand)
    win_z = torch.empty((B, nwin), dtype=torch.float32, device=dev)
    win_i = torch.empty((B, nwin), dtype=torch.int32, device=dev)
    row_f = torch.empty((B, 3), dtype=torch.float32, device=dev)
    state = torch.empty(B, dtype=torch.int32, device=dev) if state is None else state
    _FILTER_PARTIAL((B, C), logits, logits.stride(0), temperature, seeds, offsets, part_f, part_i, cand_z,
                    cand_i, V, CAPC=CAPC, DMAX=DMAX, NSCHED=NSCHED, CHUNK=chunk, config=config)
    flags = dict(HAS_K=top_k is not None, HAS_P=top_p is not None, HAS_MINP=min_p is not None,
                 LOGPROBS=logprobs_out is not None)
    dummy = temperature
    filt = (top_k if top_k is not None else dummy, top_p if top_p is not None else dummy,
            min_p if min_p is not None else dummy)
    lp = logprobs_out if logprobs_out is not None else row_f
    _filter_finish_kernel[(B,)](logits, logits.stride(0), part_f, part_i, cand_z, cand_i, win_z, win_i, temperature, seeds, offsets,
                                *filt, out, lp, row_f, state, V, C, **flags, CAPC=CAPC, CPAD=next_pow2(C),
                                NCAND=ncand, NWIN=nwin, WB=min(WB, nwin), DMAX=DMAX, NRSCHED=NRSCHED,
                                num_warps=4)
    if force_general:
        state.fill_(1)
    _filter_general_kernel[(B,)](logits, logits.stride(0), temperature, seeds, offsets, *filt, row_f, state,
                                 win_z, out, lp, V, MAX_ROUNDS, **flags, NWIN=nwin, WB=min(WB, nwin), NP=NPROBE,
                                 BLOCK=GENERAL_BLOCK, num_warps=8)
    return out
