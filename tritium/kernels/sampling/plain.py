"""1. Plain sampling: Gumbel-max with per-row temperature, greedy rows and seeded noise, and the building
blocks every sampling kernel of this package uses (the noise, the scan of a chunk, the merge of chunks).

Math, per row b of logits x[b, :V] (temperature T, seed s, step t):
    z_i = x_i / T  (T > 0: sampled row)      z_i = x_i  (T == 0: greedy row)
    K   = kept tokens: all of them, or the top-k / top-p / min-p set (filtered.py)
    token   = argmax_{i in K} z_i + g_i   (greedy: argmax_{i in K} z_i; ties go to the lowest id)
    g_i     = -log(-log u_i),  u_i = uniform from Philox4x32 with key s and counter (i // 4, t), output i % 4
              (computed in log2 units, which scales and shifts every score of a row alike)
    logprob = z_token - logsumexp_{i in K} z_i   (greedy rows: of x / 1)
Gumbel-max draws token i with probability softmax(z)_i restricted to K. The noise of token i depends only on
(seed, step, i): a row's draw is the same at any batch position, beside any rows, however the vocabulary is
split across programs.

Shapes and dtypes: logits [B, V] fp32 / bf16 / fp16 with a contiguous last dim; temperature [B] fp32; seeds,
offsets (steps) [B] int64; out [B] int64; logprobs_out [B] fp32.

The plain path (no filter): grid (B, C) programs each reduce one chunk of a row to its winner and, for
logprobs, its (max, sum exp) (ChunkWinners); a (B,) merge picks the winner of winners. Logits are read once.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from tritium.autotune import next_pow2, tuned
from tritium.platform import INTERPRET

NEG = tl.constexpr(-1.0e30)  # stands for -inf where exp() / subtraction must stay finite
# Philox4x32 rounds (Triton's tl.randint4x defaults to 10): 7 is statistically ample for sampling noise and
# cheaper. The noise, and so every seeded draw, depends on this constant.
PHILOX_ROUNDS = tl.constexpr(7)
FAST_LOG = tl.constexpr(not INTERPRET)  # MUFU through inline PTX on the GPU; tl.log2 / tl.exp in the interpreter

# BLOCK: tokens per loop step, a [BLOCK // 4, 4] tile (four tokens per Philox call); 8 per thread (16 need
# ~240 registers). Key: chunk length, batch bucket, vocabulary.
CONFIGS = [
    triton.Config({"BLOCK": 1024}, num_warps=4),
    triton.Config({"BLOCK": 2048}, num_warps=8),
    triton.Config({"BLOCK": 1024}, num_warps=8),
    triton.Config({"BLOCK": 4096}, num_warps=16),
]
CHUNK_QUANTUM = 4096  # chunks are multiples of every BLOCK in CONFIGS
TARGET_PROGRAMS = 1024  # enough programs to fill an H100/H200 several times over

# Columns of ChunkWinners.stats
WIN_SCORE = tl.constexpr(0)  # the chunk winner's (noisy) score
WIN_MAX = tl.constexpr(1)  # max z over the chunk (logprobs only)
WIN_SUMEXP = tl.constexpr(2)  # sum exp(z - max z) over the chunk (logprobs only)
WIN_COLS = tl.constexpr(3)


@dataclass
class ChunkWinners:
    """One Gumbel-max scan result per (row, chunk), written by _sample_partial_kernel (and the bracket's draw,
    bracket.py), merged by merge_row: stats [B, C, WIN_COLS] fp32 (columns WIN_*), token [B, C] int32."""
    stats: torch.Tensor
    token: torch.Tensor

    @classmethod
    def empty(cls, B: int, C: int, device) -> ChunkWinners:
        return cls(torch.empty((B, C, WIN_COLS.value), dtype=torch.float32, device=device),
                   torch.empty((B, C), dtype=torch.int32, device=device))


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


@triton.jit
def store_chunk_winner(stats_ptr, token_ptr, slot, win, tok, m, s, STATS: tl.constexpr):
    """Write scan_chunk's result for ChunkWinners entry `slot` (= row * C + chunk)."""
    part = stats_ptr + slot * WIN_COLS
    tl.store(part + WIN_SCORE, win)
    tl.store(token_ptr + slot, tok)
    if STATS:
        tl.store(part + WIN_MAX, m)
        tl.store(part + WIN_SUMEXP, s)


@triton.jit
def best_chunk(scores, c, C, CPAD: tl.constexpr):
    """The chunk of the highest of scores [CPAD] (chunks c = arange(CPAD), those >= C masked to -inf),
    the lowest chunk among ties."""
    return tl.minimum(tl.min(tl.where((c < C) & (scores == tl.max(scores)), c, CPAD)), C - 1)


# variants must not depend on step sizes (autotune.SPECIALIZATION)
@triton.jit(do_not_specialize_on_alignment=["temp_ptr", "seed_ptr", "step_ptr"])
def _sample_partial_kernel(
    logits_ptr,  # [B, V] fp32/bf16/fp16, last dim contiguous
    stride_row,  # elements between rows of logits
    temp_ptr,  # [B] fp32
    seed_ptr,  # [B] int64
    step_ptr,  # [B] int64
    win_stats_ptr,  # [B, C, WIN_COLS] fp32 out: ChunkWinners.stats
    win_token_ptr,  # [B, C] int32 out: ChunkWinners.token
    V,  # vocabulary size
    chunk,  # tokens per program (multiple of CHUNK_QUANTUM)
    row_bucket,  # next_pow2(B): autotune key only
    STATS: tl.constexpr,  # compute (max, sum exp) for logprobs
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # int64 index math: also skips the interpreter's overflow checks
    c = tl.program_id(1)
    t = tl.load(temp_ptr + row)
    sampled = t > 0
    start = c * chunk
    win, tok, m, s = scan_chunk(logits_ptr + row * stride_row, start, tl.minimum(start + chunk, V),
                                1.0 / tl.where(sampled, t, 1.0), sampled, tl.load(seed_ptr + row),
                                tl.load(step_ptr + row), NEG, STATS, False, BLOCK)
    store_chunk_winner(win_stats_ptr, win_token_ptr, row * tl.num_programs(1) + c, win, tok, m, s, STATS)


@triton.jit
def merge_row(win_stats_ptr, win_token_ptr, logits_ptr, stride_row, temp_ptr, out_ptr, lp_ptr, row, C,
              STATS: tl.constexpr, CPAD: tl.constexpr):
    """Row `row`'s token (the winner of its C ChunkWinners, lowest chunk among ties) into out_ptr [B] int64
    and, if STATS, its logprob from the chunks' (max, sum exp) into lp_ptr [B] fp32."""
    c = tl.arange(0, CPAD)
    cm = c < C
    part = win_stats_ptr + (row * C + c) * WIN_COLS
    pick = best_chunk(tl.load(part + WIN_SCORE, mask=cm, other=float("-inf")), c, C, CPAD)
    tok = tl.load(win_token_ptr + row * C + pick)
    tl.store(out_ptr + row, tok.to(tl.int64))
    if STATS:
        t = tl.load(temp_ptr + row)
        z = tl.load(logits_ptr + row * stride_row + tok).to(tl.float32) * (1.0 / tl.where(t > 0, t, 1.0))
        m = tl.load(part + WIN_MAX, mask=cm, other=NEG)
        s = tl.load(part + WIN_SUMEXP, mask=cm, other=0.0)
        big = tl.max(m)
        tl.store(lp_ptr + row, z - big - tl.log(tl.sum(s * tl.exp(m - big))))


@triton.jit
def _sample_merge_kernel(
    win_stats_ptr,  # [B, C, WIN_COLS] fp32: ChunkWinners from _sample_partial_kernel
    win_token_ptr,  # [B, C] int32
    logits_ptr,  # [B, V] (if STATS: the winner's logit)
    stride_row,
    temp_ptr,  # [B] fp32
    out_ptr,  # [B] int64 out: token
    lp_ptr,  # [B] fp32 out: logprob (if STATS)
    C,  # chunks per row
    STATS: tl.constexpr,
    CPAD: tl.constexpr,  # next_pow2(C)
):
    merge_row(win_stats_ptr, win_token_ptr, logits_ptr, stride_row, temp_ptr, out_ptr, lp_ptr,
              tl.program_id(0).to(tl.int64), C, STATS, CPAD)


_PARTIAL = tuned(_sample_partial_kernel, CONFIGS, key=["chunk", "row_bucket", "V"], name="sample_partial")


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def plan_chunks(B: int, V: int) -> tuple[int, int]:
    """(chunks per row, tokens per chunk) of the plain path: enough programs to fill the GPU. Depends on
    the batch bucket; draws do not depend on it."""
    n = max(1, min(cdiv(TARGET_PROGRAMS, next_pow2(B)), cdiv(V, CHUNK_QUANTUM)))
    chunk = cdiv(cdiv(V, n), CHUNK_QUANTUM) * CHUNK_QUANTUM
    return cdiv(V, chunk), chunk


def sample_plain(logits, temperature, seeds, offsets, out, logprobs_out=None, config: triton.Config | None = None):
    """The plain path of sample() (inputs validated there, B > 0): partial and merge launches. Returns out."""
    B, V = logits.shape
    stats = logprobs_out is not None
    n, chunk = plan_chunks(B, V)
    winners = ChunkWinners.empty(B, n, logits.device)
    _PARTIAL((B, n), logits, logits.stride(0), temperature, seeds, offsets, winners.stats, winners.token, V, chunk,
             next_pow2(B), STATS=stats, config=config)
    _sample_merge_kernel[(B,)](winners.stats, winners.token, logits, logits.stride(0), temperature, out,
                               logprobs_out if stats else winners.stats, n, STATS=stats, CPAD=next_pow2(n))
    return out
