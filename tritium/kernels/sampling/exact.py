"""2. Top-k / top-p / min-p exactly: the semantics, the threshold math every filtered path shares, the
reference (keep_mask_ref), the state a filtered row carries from path to path (PendingRows), and
general_row, the exact sequential draw of one row: the last resort for rows neither the candidate window
(filtered.py) nor the parallel bracket rounds (bracket.py) settle (e.g. ties wider than a window).

Semantics (joint, all on the unfiltered distribution p = softmax(z) of a row, z = logits / T):
    top-k (k > 0):  keep z >= v_k, v_k = the k-th largest z (ties with it kept; k > V keeps all)
    top-p (p < 1):  keep z >= v_p, v_p = the largest value v with mass(z >= v) >= p (the smallest set of top
                    tokens whose mass reaches p, ties with its last value kept)
    min-p (> 0):    keep p_i >= min_p * max p, i.e. z >= max z + log(min_p)
    kept = the intersection, i.e. z >= thr = max(v_k, v_p, min-p threshold); then Gumbel-max over it.
top-k and top-p share one predicate: v* = max(v_k, v_p) is the largest present value v with
count(z >= v) >= k_on or mass(z >= v) >= mass_on = p * sum(exp z) (both fall as v rises; -inf, keep all, if
it never holds). Shapes and dtypes as in plain.py, plus top_k [B] int32 (0 = off), top_p [B] fp32 (1 = off),
min_p [B] fp32 (0 = off); a filter tensor not given reads as off in every row (HAS_K / HAS_P / HAS_MINP).

general_row, one program's draw of one row: rounds of NP probes spread over a bracket [lo, hi] of present
values holding v* count tokens and mass at or above each probe (one read of the row each); the bracket
shrinks to the present values around the crossing until it holds at most NWIN tokens (or one value); those
are gathered and walked exactly (sorted). A last read draws among z >= thr with the plain path's scan. Several
reads of the row by one program, about log_NP(range / spacing near v*) rounds.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from tritium.kernels.sampling.plain import NEG, scan_chunk

NPROBE = 8  # probes per bracketing round of general_row
GENERAL_BLOCK = 512
MAX_ROUNDS = 64  # a bound only: each round lowers hi to a smaller present value, by ~NP x in width

# PendingRows.row_stats columns: a row's statistics, written by the finishing kernel
ROW_MAX = tl.constexpr(0)  # max z of the row
ROW_SUMEXP = tl.constexpr(1)  # sum exp(z - max z)
ROW_MIN = tl.constexpr(2)  # the smallest finite z
ROW_COLS = tl.constexpr(3)

# Which path drew a row (PendingRows.path, sample_filtered's `state`)
PATH_WINDOW = tl.constexpr(0)
PATH_BRACKET = tl.constexpr(1)
PATH_SEQUENTIAL = tl.constexpr(2)
# Bracket state columns (PendingRows.bracket_f / bracket_i, [2, B, BR_COLS]: one buffer per round parity)
BR_LO = tl.constexpr(0)  # fp32: the predicate holds at lo
BR_HI = tl.constexpr(1)  # fp32: and fails at hi
BR_MASS_HI = tl.constexpr(2)  # fp32: mass at or above hi
BR_PHASE = tl.constexpr(0)  # int32: PHASE_*
BR_N_HI = tl.constexpr(1)  # int32: tokens at or above hi
BR_N_WIN = tl.constexpr(2)  # int32: tokens in the gathered window [lo, hi)
BR_COLS = tl.constexpr(4)
# A row's phase in the bracket rounds
PHASE_BRACKET = tl.constexpr(0)  # bracket set, nothing counted yet
PHASE_COUNTED = tl.constexpr(1)  # the chunks' counts at the bracket's probes are written
PHASE_WINDOW = tl.constexpr(2)  # the bracket's tokens are gathered into the window: ready to draw
PHASE_SEQUENTIAL = tl.constexpr(3)  # left to the sequential draw (general_row)
PHASE_DONE = tl.constexpr(4)  # drawn by the finishing kernel, not pending
# bracket.py's counters: rows pending at each round, rows to draw, rows left over, a grid-sync counter and the
# buffer holding the final bracket state (>= bracket.ROUNDS + 5); zeroed by _filter_partial_kernel
COUNT_SLOTS = 16


@dataclass
class PendingRows:
    """What the finishing kernel hands to bracket.py for the rows it left pending (and bracket.py's scratch):
    row_stats [B, ROW_COLS] fp32 (ROW_*); path [B] int32 (PATH_*: PATH_BRACKET while pending); bracket_f,
    bracket_i [2, B, BR_COLS] fp32 / int32 (BR_*: a row's bracket state, double-buffered by round parity);
    counts [COUNT_SLOTS] int32 (counts[0]: rows pending at round 0); window_z, window_token [B, nwin] fp32 /
    int32 (the finishing kernel's candidate window; window_z is then the bracket's window)."""
    row_stats: torch.Tensor
    path: torch.Tensor
    bracket_f: torch.Tensor
    bracket_i: torch.Tensor
    counts: torch.Tensor
    window_z: torch.Tensor
    window_token: torch.Tensor

    @classmethod
    def empty(cls, B: int, nwin: int, device, path=None) -> PendingRows:
        f32, i32 = torch.float32, torch.int32
        return cls(torch.empty((B, ROW_COLS.value), dtype=f32, device=device),
                   torch.empty(B, dtype=i32, device=device) if path is None else path,
                   torch.empty((2, B, BR_COLS.value), dtype=f32, device=device),
                   torch.empty((2, B, BR_COLS.value), dtype=i32, device=device),
                   torch.empty(COUNT_SLOTS, dtype=i32, device=device),
                   torch.empty((B, nwin), dtype=f32, device=device), torch.empty((B, nwin), dtype=i32, device=device))

    def make_all_pending(self) -> None:
        """Every row pending with a fresh bracket (tests: the bracket path on rows the window settles)."""
        self.counts.zero_()
        self.counts[0] = self.path.shape[0]
        self.path.fill_(PATH_BRACKET.value)
        self.bracket_i.zero_()  # PHASE_BRACKET
        self.bracket_f[0, :, BR_LO.value] = self.row_stats[:, ROW_MIN.value]
        self.bracket_f[0, :, BR_HI.value] = float("inf")
        self.bracket_f[0, :, BR_MASS_HI.value] = 0.0


@triton.jit
def init_bracket(bf_ptr, bi_ptr, row, B, done, lo):
    """A row's first bracket state in both buffers of bracket_f / bracket_i [2, B, BR_COLS]: pending rows get
    [lo, +inf), phase PHASE_BRACKET; done rows PHASE_DONE."""
    ph = tl.where(done, PHASE_DONE, PHASE_BRACKET)
    for buf in tl.static_range(2):
        tl.store(bi_ptr + (buf * B + row) * BR_COLS + BR_PHASE, ph)
    tl.store(bi_ptr + row * BR_COLS + BR_N_HI, 0)
    tl.store(bi_ptr + row * BR_COLS + BR_N_WIN, 0)
    tl.store(bf_ptr + row * BR_COLS + BR_LO, lo)
    tl.store(bf_ptr + row * BR_COLS + BR_HI, float("inf"))
    tl.store(bf_ptr + row * BR_COLS + BR_MASS_HI, 0.0)


def filter_args(temperature, top_k, top_p, min_p, logprobs_out):
    """The (top_k, top_p, min_p) pointers of the filter kernels (temperature stands in for a filter not given)
    and their flags: HAS_K, HAS_P, HAS_MINP and LOGPROBS."""
    flags = dict(HAS_K=top_k is not None, HAS_P=top_p is not None, HAS_MINP=min_p is not None,
                 LOGPROBS=logprobs_out is not None)
    return tuple(temperature if f is None else f for f in (top_k, top_p, min_p)), flags


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
    tile that wide."""
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
def general_row(
    logits_ptr,  # [B, V] fp32/bf16/fp16
    stride_row,
    temp_ptr, seed_ptr, step_ptr,  # [B] fp32, int64, int64
    topk_ptr, topp_ptr, minp_ptr,  # [B] int32, fp32, fp32
    row_f_ptr,  # [B, ROW_COLS] fp32: PendingRows.row_stats
    path_ptr,  # [B] int32 out: PATH_SEQUENTIAL for the rows drawn here
    win_ptr,  # [B, NWIN] fp32 scratch
    out_ptr,  # [B] int64 out
    lp_ptr,  # [B] fp32 out (if LOGPROBS)
    row, V, max_rounds,
    HAS_K: tl.constexpr, HAS_P: tl.constexpr, HAS_MINP: tl.constexpr, LOGPROBS: tl.constexpr,
    NWIN: tl.constexpr, NP: tl.constexpr, BLOCK: tl.constexpr,
):
    tl.store(path_ptr + row, PATH_SEQUENTIAL)
    t, k, p, mp = row_params(temp_ptr, topk_ptr, topp_ptr, minp_ptr, row, HAS_K, HAS_P, HAS_MINP)
    sampled = t > 0
    inv_t = 1.0 / tl.where(sampled, t, 1.0)
    big = tl.load(row_f_ptr + row * ROW_COLS + ROW_MAX)
    k_on, mass_on = predicate_bounds(k, p, V, tl.load(row_f_ptr + row * ROW_COLS + ROW_SUMEXP))
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
    """[B, V] bool: the kept set of scaled logits z [B, V] fp32 (module docstring; None: the filter is off).
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
