"""Gumbel-max building blocks shared by every sampling kernel (sampling.py, sampling_filter.py,
sampling_bracket.py, sampling_threshold.py): counter-based Gumbel noise (Philox4x32), a fast exp, and the
scan of a block / a chunk of a row for its noisy winner (math in sampling.py's docstring).
"""
from __future__ import annotations

import triton
import triton.language as tl

from tritium.platform import INTERPRET

NEG = tl.constexpr(-1.0e30)  # stands for -inf where exp() / subtraction must stay finite
# Philox4x32 rounds (Triton's tl.randint4x defaults to 10): 7 is statistically ample for sampling noise and
# ~30% cheaper. The noise, and so every seeded draw, depends on this constant.
PHILOX_ROUNDS = tl.constexpr(7)
FAST_LOG = tl.constexpr(not INTERPRET)  # MUFU through inline PTX on the GPU; tl.log2 / tl.exp in the interpreter


@triton.jit
def exp_fast(x):
    """exp(x) for per-token sums: MUFU.EX2 without tl.exp's subnormal fix-ups on the GPU."""
    if FAST_LOG:
        y = tl.inline_asm_elementwise("{ .reg .f32 t; mul.f32 t, $1, 0f3FB8AA3B; ex2.approx.ftz.f32 $0, t; }",
                                      "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1)
    else:
        y = tl.exp(x)
    return y


@triton.jit
def noisy_scores(z, seed, step, group, lane):
    """z / log 2 + Gumbel noise in log2 units for tokens 4 * group + lane (group, lane broadcast to z's shape).

    The 32 random bits of a token are output `lane` of Philox4x32-PHILOX_ROUNDS for counter (group, step, 0,
    0) and key seed: tl.randint4x(seed, (step << 32) | group, PHILOX_ROUNDS), written out (first round folded,
    no overflow checks) because the interpreter pays per op. u in (0, 1) takes 23 bits (centred: never 0
    or 1); -log2(-log2 u) = (G - log log 2) / log 2 for G = -log(-log u), a shift and scale shared by the
    whole row, so the argmax is that of z + G."""
    seed = seed.to(tl.int64)
    k0 = seed.to(tl.uint32)  # truncates
    k1 = (seed >> 32).to(tl.uint32)
    c0 = group.to(tl.uint32)
    c1 = tl.zeros_like(c0)
    c2 = tl.umulhi(c0, 0xD2511F53) ^ k1
    c3 = tl.mul(c0, 0xD2511F53, sanitize_overflow=False)
    c0 = c1 ^ (step.to(tl.int64).to(tl.uint32) ^ k0)
    for _ in tl.static_range(PHILOX_ROUNDS - 1):
        k0 = tl.add(k0, 0x9E3779B9, sanitize_overflow=False)
        k1 = tl.add(k1, 0xBB67AE85, sanitize_overflow=False)
        n0 = tl.umulhi(c2, 0xCD9E8D57) ^ c1 ^ k0
        n2 = tl.umulhi(c0, 0xD2511F53) ^ c3 ^ k1
        c1 = tl.mul(c2, 0xCD9E8D57, sanitize_overflow=False)
        c3 = tl.mul(c0, 0xD2511F53, sanitize_overflow=False)
        c0 = n0
        c2 = n2
    r = tl.where(lane == 0, c0, tl.where(lane == 1, c1, tl.where(lane == 2, c2, c3)))
    u = (r >> 9).to(tl.float32) * 1.1920928955078125e-07 + 5.9604644775390625e-08
    if FAST_LOG:
        # tl.log2 is libdevice's accurate log2f (~20 instructions); the noise needs only MUFU.LG2
        sc = tl.inline_asm_elementwise(
            "{ .reg .f32 t; lg2.approx.ftz.f32 t, $2; neg.f32 t, t; lg2.approx.ftz.f32 t, t; neg.f32 t, t;"
            " fma.rn.f32 $0, $1, 0f3FB8AA3B, t; }",
            "=f,f,f", [z, u], dtype=tl.float32, is_pure=True, pack=1)
    else:
        sc = z * 1.4426950408889634 - tl.log2(-tl.log2(u))
    return sc


@triton.jit
def scan_block(x, off, tile, end, inv_t, sampled, seed, step, thr, best_s, best_o, m, s,
               MASKED: tl.constexpr, STATS: tl.constexpr, THRESH: tl.constexpr, G: tl.constexpr):
    """One [G, 4] block x of logits, tokens off + tile below end (tile: [G, 4] offsets): update the per-lane
    winner (strict > keeps the lowest token) and, if STATS, the online (max, sum exp) of z. THRESH: only
    tokens with z >= thr take part."""
    z = x.to(tl.float32) * inv_t
    if MASKED:
        z = tl.where(tile < end - off, z, NEG)
    if THRESH:
        z = tl.where(z >= thr, z, NEG)
    if sampled:
        sc = noisy_scores(z, seed, step, (off // 4 + tl.arange(0, G))[:, None], tl.arange(0, 4)[None, :])
    else:
        sc = z
    if MASKED or THRESH:
        sc = tl.where(z > NEG, sc, float("-inf"))
    better = sc > best_s
    best_s = tl.where(better, sc, best_s)
    best_o = tl.where(better, off, best_o)
    if STATS:
        m_new = tl.maximum(m, tl.max(z))
        s = s * tl.exp(m - m_new) + tl.sum(exp_fast(z - m_new))
        m = m_new
    return best_s, best_o, m, s


@triton.jit
def first_block(row_ptr, start, end, BLOCK: tl.constexpr):
    """The first full BLOCK of tokens [start, end) of a row ([BLOCK // 4, 4]; nothing is read when there
    is no full block): what scan_chunk reads first, for callers that fetch it early (x0)."""
    tile = tl.arange(0, BLOCK // 4)[:, None] * 4 + tl.arange(0, 4)[None, :]
    return tl.load(row_ptr + start + tile, mask=tile < (end - start) // BLOCK * BLOCK, other=0.0)


@triton.jit
def scan_chunk(row_ptr, start, end, inv_t, sampled, seed, step, thr, STATS: tl.constexpr, THRESH: tl.constexpr,
               BLOCK: tl.constexpr, x0=None):
    """Gumbel-max over tokens [start, end) of a row (scan_block over full blocks, then the ragged tail):
    (winning score, its token (lowest among ties), max z, sum exp(z - max z) if STATS). THRESH: only
    tokens with z >= thr take part. x0: first_block(row_ptr, start, end, BLOCK), if already fetched."""
    G: tl.constexpr = BLOCK // 4
    tile = tl.arange(0, G)[:, None] * 4 + tl.arange(0, 4)[None, :]  # four tokens per Philox counter
    best_s = tl.full([G, 4], float("-inf"), tl.float32)
    best_o = tl.zeros([G, 4], tl.int32)  # block offset of each lane's winner
    m = tl.full([], NEG, tl.float32)
    s = tl.zeros([], tl.float32)
    full_end = start + (end - start) // BLOCK * BLOCK
    if x0 is None:
        x = first_block(row_ptr, start, end, BLOCK)
    else:
        x = x0
    for off in range(start, full_end, BLOCK):  # full blocks: no masks
        # the next block is fetched while this one is scanned (the last fetch repeats the last block)
        x_next = tl.load(row_ptr + tl.minimum(off + BLOCK, full_end - BLOCK) + tile)
        best_s, best_o, m, s = scan_block(x, off, tile, end, inv_t, sampled, seed, step, thr, best_s,
                                          best_o, m, s, False, STATS, THRESH, G)
        x = x_next
    for off in range(full_end, end, BLOCK):  # the ragged tail, at most once
        x = tl.load(row_ptr + off + tile, mask=tile < end - off, other=0.0)
        best_s, best_o, m, s = scan_block(x, off, tile, end, inv_t, sampled, seed, step, thr, best_s,
                                          best_o, m, s, True, STATS, THRESH, G)
    win = tl.max(best_s)
    return win, tl.min(tl.where(best_s == win, best_o + tile, 2147483647)), m, s
