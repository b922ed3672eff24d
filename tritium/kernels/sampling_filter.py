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
from tritium.kernels.sampling import NEG, noisy_tile, noisy_tokens

# The chunk (CHUNK = min(FILTER_CHUNK, next_pow2(V)) tokens per program) is fixed by V alone, so sums and
# candidate sets, and with them every draw, do not depend on the batch or the config.
FILTER_CONFIGS = [triton.Config({}, num_warps=8), triton.Config({}, num_warps=4)]
FILTER_CHUNK = 4096
CAPC = 32  # candidates kept per chunk
DMAX = 16.0  # widest candidate window below the chunk max (exp(-16) ~ 1e-7 of the max probability)
NSCHED = 7  # windows tried: 0, DMAX / 2**5, ..., DMAX / 2, DMAX
NPROBE = 8  # probes per bracketing round of the general kernel
GENERAL_BLOCK = 512
MAX_ROUNDS = 100  # a bound only: each round strictly lowers hi to a smaller present value


@triton.jit
def _ordered(z):
    # fp32 -> int32 whose signed order is the float order
    b = z.to(tl.int32, bitcast=True)
    return b ^ ((b >> 31) & 0x7FFFFFFF)


@triton.jit
def _unordered(o):
    return (o ^ ((o >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)


@triton.jit
def _filter_partial_kernel(
    logits_ptr,  # [B, V] fp32/bf16/fp16, last dim contiguous
    stride_row,  # elements between rows
    temp_ptr,  # [B] fp32
    seed_ptr,  # [B] int64
    step_ptr,  # [B] int64
    part_f_ptr,  # [B, C, 6] fp32 out: best score, its z, max z, sum exp(z - max), min z, floor F_c
    part_i_ptr,  # [B, C, 2] int32 out: best token, number of candidates
    cand_z_ptr,  # [B, C, CAPC] fp32 out: candidate z
    cand_i_ptr,  # [B, C, CAPC] int32 out: candidate token
    V,  # vocabulary size
    CAPC: tl.constexpr,
    DMAX: tl.constexpr,
    NSCHED: tl.constexpr,
    CHUNK: tl.constexpr,  # tokens per program (power of two >= 4)
):
    row = tl.program_id(0)
    c = tl.program_id(1)
    slot = row * tl.num_programs(1) + c
    G: tl.constexpr = CHUNK // 4
    t = tl.load(temp_ptr + row)
    sampled = t > 0
    inv_t = 1.0 / tl.where(sampled, t, 1.0)
    tok = c * CHUNK + tl.arange(0, G)[:, None] * 4 + tl.arange(0, 4)[None, :]
    mask = tok < V
    x = tl.load(logits_ptr + row.to(tl.int64) * stride_row + tok, mask=mask, other=0.0).to(tl.float32)
    z = tl.where(mask, tl.maximum(x * inv_t, NEG), NEG)
    if sampled:
        sc = noisy_tile(z, tl.load(seed_ptr + row), tl.load(step_ptr + row), c * CHUNK, G)
    else:
        sc = z
    sc = tl.where(mask, sc, float("-inf"))
    best = tl.max(sc)
    best_i = tl.min(tl.where(sc == best, tok, 2147483647))
    m = tl.max(z)
    # candidate window: the widest D of the schedule with at most CAPC tokens in [m - D, m]
    d_sel = -1.0
    for k in tl.static_range(NSCHED):
        d = 0.0 if k == 0 else DMAX / (2 ** (NSCHED - 1 - k))
        n = tl.sum((mask & (z >= m - d)).to(tl.int32))
        d_sel = tl.where(n <= CAPC, d, d_sel)
    floor = tl.where(d_sel >= 0, m - d_sel, float("inf"))  # +inf: too many ties, no candidates
    sel = mask & (z >= floor)
    n_row = tl.sum(sel.to(tl.int32), 1)
    pos = (tl.cumsum(n_row, 0) - n_row)[:, None] + tl.cumsum(sel.to(tl.int32), 1) - 1
    ok = sel & (pos < CAPC)
    tl.store(cand_z_ptr + slot * CAPC + pos, z, mask=ok)
    tl.store(cand_i_ptr + slot * CAPC + pos, tok, mask=ok)
    out = part_f_ptr + slot * 6
    tl.store(out, best)
    tl.store(out + 1, tl.max(tl.where(tok == best_i, z, NEG)))
    tl.store(out + 2, m)
    tl.store(out + 3, tl.sum(tl.exp(z - m)))
    tl.store(out + 4, tl.min(tl.where(mask, z, float("inf"))))
    tl.store(out + 5, floor)
    tl.store(part_i_ptr + slot * 2, best_i)
    tl.store(part_i_ptr + slot * 2 + 1, tl.sum(ok.to(tl.int32)))


@triton.jit
def _row_params(temp_ptr, topk_ptr, topp_ptr, minp_ptr, row, HAS_K: tl.constexpr, HAS_P: tl.constexpr,
                HAS_MINP: tl.constexpr):
    t = tl.load(temp_ptr + row)
    k = tl.load(topk_ptr + row) if HAS_K else tl.full([], 0, tl.int32)
    p = tl.load(topp_ptr + row) if HAS_P else tl.full([], 1.0, tl.float32)
    mp = tl.load(minp_ptr + row) if HAS_MINP else tl.full([], 0.0, tl.float32)
    return t, k, p, mp


@triton.jit
def _filter_finish_kernel(
    part_f_ptr,  # [B, C, 6] fp32 from _filter_partial_kernel
    part_i_ptr,  # [B, C, 2] int32
    cand_z_ptr,  # [B, C, CAPC] fp32
    cand_i_ptr,  # [B, C, CAPC] int32
    temp_ptr, seed_ptr, step_ptr,  # [B] fp32, int64, int64
    topk_ptr, topp_ptr, minp_ptr,  # [B] int32, fp32, fp32 (dummies when HAS_* is off)
    out_ptr,  # [B] int64 out: token (resolved rows)
    lp_ptr,  # [B] fp32 out: logprob (resolved rows, if LOGPROBS)
    row_f_ptr,  # [B, 3] fp32 out: max z, sum exp(z - max), min z (for the general kernel)
    state_ptr,  # [B] int32 out: 0 done, 1 pending
    V, C,
    HAS_K: tl.constexpr, HAS_P: tl.constexpr, HAS_MINP: tl.constexpr, LOGPROBS: tl.constexpr,
    CAPC: tl.constexpr, CPAD: tl.constexpr, NSORT: tl.constexpr,  # CPAD >= C, NSORT >= C * CAPC
):
    row = tl.program_id(0)
    t, k, p, mp = _row_params(temp_ptr, topk_ptr, topp_ptr, minp_ptr, row, HAS_K, HAS_P, HAS_MINP)
    c = tl.arange(0, CPAD)
    cm = c < C
    part = part_f_ptr + (row * C + c) * 6
    sc = tl.load(part, mask=cm, other=float("-inf"))
    m = tl.load(part + 2, mask=cm, other=NEG)
    big = tl.max(m)
    total = tl.sum(tl.load(part + 3, mask=cm, other=0.0) * tl.exp(m - big))
    floor = tl.max(tl.load(part + 5, mask=cm, other=float("-inf")))
    win = tl.max(sc)
    pick = tl.min(tl.where(cm & (sc == win), c, CPAD))
    tok = tl.load(part_i_ptr + (row * C + pick) * 2)
    lp = tl.load(part_f_ptr + (row * C + pick) * 6 + 1) - big - tl.log(total)
    # candidates of all chunks, sorted by z (descending) via packed (ordered z, token) keys
    s = tl.arange(0, NSORT)
    sc_c = s // CAPC
    valid = (sc_c < C) & (s % CAPC < tl.load(part_i_ptr + (row * C + sc_c) * 2 + 1, mask=sc_c < C, other=0))
    at = (row * C + sc_c) * CAPC + s % CAPC
    cz = tl.load(cand_z_ptr + at, mask=valid, other=0.0)
    ci = tl.load(cand_i_ptr + at, mask=valid, other=0)
    key = tl.where(valid, (_ordered(cz).to(tl.int64) << 32) | ci.to(tl.int64), -(2**63))
    key = tl.sort(key, descending=True)
    zs = _unordered((key >> 32).to(tl.int32))
    ids = (key & 0xFFFFFFFF).to(tl.int32)
    vs = key != -(2**63)
    e = tl.where(vs, tl.exp(zs - big), 0.0)
    # (scalar thresholds, not scalar & vector masks: the interpreter mis-broadcasts scalar booleans)
    k_on = tl.where(k > 0, tl.minimum(k, V), 2147483647)
    mass_on = tl.where(p < 1.0, p * total, float("inf"))
    hit = vs & ((s + 1 >= k_on) | (tl.cumsum(e, 0) >= mass_on))
    first = tl.min(tl.where(hit, s, NSORT))
    vstar = tl.max(tl.where(s == first, zs, float("-inf")))  # -inf when not found
    thr = tl.where((k > 0) | (p < 1.0), vstar, float("-inf"))
    thr = tl.minimum(tl.maximum(thr, tl.where(mp > 0, big + tl.log(mp), float("-inf"))), big)
    filtered = (k > 0) | (p < 1.0) | (mp > 0)
    # v* found below F is not exact, but then the true v* is below F too: only thr >= F matters
    done = (filtered == 0) | (thr >= floor)
    kept = vs & (zs >= thr)
    score = tl.where(t > 0, noisy_tokens(zs, tl.load(seed_ptr + row), tl.load(step_ptr + row), ids), zs)
    score = tl.where(kept, score, float("-inf"))
    best = tl.max(score)
    ftok = tl.min(tl.where(kept & (score == best), ids, 2147483647))
    fz = tl.max(tl.where(ids == ftok, zs, NEG))
    flp = fz - big - tl.log(tl.sum(tl.where(kept, e, 0.0)))
    tl.store(out_ptr + row, tl.where(filtered, ftok, tok).to(tl.int64), mask=done)
    if LOGPROBS:
        tl.store(lp_ptr + row, tl.where(filtered, flp, lp), mask=done)
    tl.store(state_ptr + row, tl.where(done, 0, 1))
    tl.store(row_f_ptr + row * 3, big)
    tl.store(row_f_ptr + row * 3 + 1, total)
    tl.store(row_f_ptr + row * 3 + 2, tl.min(tl.load(part + 4, mask=cm, other=float("inf"))))


@triton.jit
def _filter_general_kernel(
    logits_ptr,  # [B, V] fp32/bf16/fp16
    stride_row,
    temp_ptr, seed_ptr, step_ptr,  # [B] fp32, int64, int64
    topk_ptr, topp_ptr, minp_ptr,  # [B] int32, fp32, fp32
    row_f_ptr,  # [B, 3] fp32: max z, sum exp(z - max), min z
    state_ptr,  # [B] int32: only rows with 1 are worked on
    out_ptr,  # [B] int64 out
    lp_ptr,  # [B] fp32 out (if LOGPROBS)
    V, max_rounds,
    HAS_K: tl.constexpr, HAS_P: tl.constexpr, HAS_MINP: tl.constexpr, LOGPROBS: tl.constexpr,
    NP: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    if tl.load(state_ptr + row) == 0:
        return
    t, k, p, mp = _row_params(temp_ptr, topk_ptr, topp_ptr, minp_ptr, row, HAS_K, HAS_P, HAS_MINP)
    sampled = t > 0
    inv_t = 1.0 / tl.where(sampled, t, 1.0)
    big = tl.load(row_f_ptr + row * 3)
    k_on = tl.where(k > 0, tl.minimum(k, V), 2147483647)
    mass_on = tl.where(p < 1.0, p * tl.load(row_f_ptr + row * 3 + 1), float("inf"))
    lo = tl.load(row_f_ptr + row * 3 + 2)  # present, and v* >= lo always
    hi = big  # present; v* <= hi
    row_ptr = logits_ptr + row.to(tl.int64) * stride_row
    j = tl.arange(0, NP)
    kp = (k > 0) | (p < 1.0)
    rounds = 0
    while kp & (hi > lo) & (rounds < max_rounds):
        probe = tl.where(j == NP - 1, hi, lo + (hi - lo) * ((j + 1).to(tl.float32) / NP))
        cnt = tl.zeros([NP], tl.int32)
        mass = tl.zeros([NP], tl.float32)
        lo_next = tl.full([NP], float("inf"), tl.float32)  # min z >= probe
        hi_next = tl.full([NP], float("-inf"), tl.float32)  # max z < probe
        for off in range(0, V, BLOCK):
            o = off + tl.arange(0, BLOCK)
            mk = (o < V)[None, :]
            x = tl.load(row_ptr + o, mask=o < V, other=0.0).to(tl.float32)
            z = tl.maximum(x * inv_t, NEG)[None, :]
            ge = mk & (z >= probe[:, None])
            lt = mk & (z < probe[:, None])
            cnt += tl.sum(ge.to(tl.int32), 1)
            mass += tl.sum(tl.where(ge, tl.exp(z - big), 0.0), 1)
            lo_next = tl.minimum(lo_next, tl.min(tl.where(ge, z, float("inf")), 1))
            hi_next = tl.maximum(hi_next, tl.max(tl.where(lt, z, float("-inf")), 1))
        # the predicate falls with the probe: probes [0, a) hold it, [a, NP) do not
        a = tl.sum(((cnt >= k_on) | (mass >= mass_on)).to(tl.int32))
        lo = tl.where(a > 0, tl.max(tl.where(j == a - 1, lo_next, float("-inf"))), lo)
        hi = tl.where(a == NP, lo, tl.max(tl.where(j == a, hi_next, float("-inf"))))
        rounds += 1
    thr = tl.where(kp, lo, float("-inf"))
    thr = tl.minimum(tl.maximum(thr, tl.where(mp > 0, big + tl.log(mp), float("-inf"))), big)
    # draw among z >= thr
    G: tl.constexpr = BLOCK // 4
    seed = tl.load(seed_ptr + row)
    step = tl.load(step_ptr + row)
    tile = tl.arange(0, G)[:, None] * 4 + tl.arange(0, 4)[None, :]
    best_s = tl.full([G, 4], float("-inf"), tl.float32)
    best_z = tl.full([G, 4], NEG, tl.float32)
    best_i = tl.zeros([G, 4], tl.int32)
    kept_mass = tl.zeros([G, 4], tl.float32)
    for off in range(0, V, BLOCK):
        tok = off + tile
        mask = tok < V
        z = tl.maximum(tl.load(row_ptr + tok, mask=mask, other=0.0).to(tl.float32) * inv_t, NEG)
        kept = mask & (z >= thr)
        if sampled:
            sc = noisy_tile(z, seed, step, off, G)
        else:
            sc = z
        sc = tl.where(kept, sc, float("-inf"))
        better = sc > best_s
        best_s = tl.where(better, sc, best_s)
        best_z = tl.where(better, z, best_z)
        best_i = tl.where(better, tok, best_i)
        kept_mass += tl.where(kept, tl.exp(z - big), 0.0)
    win = tl.max(best_s)
    win_i = tl.min(tl.where(best_s == win, best_i, 2147483647))
    tl.store(out_ptr + row, win_i.to(tl.int64))
    if LOGPROBS:
        win_z = tl.max(tl.where(best_i == win_i, best_z, NEG))
        tl.store(lp_ptr + row, win_z - big - tl.log(tl.sum(kept_mass)))


_FILTER_PARTIAL = tuned(_filter_partial_kernel, FILTER_CONFIGS, key=["V"])


def filter_chunk(V: int) -> int:
    return min(FILTER_CHUNK, max(4, next_pow2(V)))


def sample_filtered(logits, temperature, seeds, offsets, top_k, top_p, min_p, out, logprobs_out, config=None,
                    state=None):
    """Launch the three kernels (inputs already validated by sampling.sample). `state`, if given ([B]
    int32), receives 0 for rows finished by the candidate pass, 1 for rows the general kernel drew."""
    B, V = logits.shape
    dev = logits.device
    chunk = filter_chunk(V)
    C = -(-V // chunk)
    part_f = torch.empty((B, C, 6), dtype=torch.float32, device=dev)
    part_i = torch.empty((B, C, 2), dtype=torch.int32, device=dev)
    cand_z = torch.empty((B, C, CAPC), dtype=torch.float32, device=dev)
    cand_i = torch.empty((B, C, CAPC), dtype=torch.int32, device=dev)
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
    _filter_finish_kernel[(B,)](part_f, part_i, cand_z, cand_i, temperature, seeds, offsets, *filt, out, lp,
                                row_f, state, V, C, **flags, CAPC=CAPC, CPAD=next_pow2(C),
                                NSORT=next_pow2(C * CAPC), num_warps=4)
    _filter_general_kernel[(B,)](logits, logits.stride(0), temperature, seeds, offsets, *filt, row_f, state,
                                 out, lp, V, MAX_ROUNDS, **flags, NP=NPROBE, BLOCK=GENERAL_BLOCK, num_warps=8)
    return out
