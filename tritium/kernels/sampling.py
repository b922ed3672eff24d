"""Token sampling: Gumbel-max with per-row temperature, greedy rows, top-k / top-p / min-p, seeded draws.

Math, per row b of logits x[b, :V] (temperature T, seed s, step t):
    z_i = x_i / T  (T > 0: sampled row)      z_i = x_i  (T == 0: greedy row)
    K   = kept tokens: all of them, or the top-k / top-p / min-p set (joint, see sampling_filter.py)
    token   = argmax_{i in K} z_i + g_i   (greedy: argmax_{i in K} z_i; ties go to the lowest id)
    g_i     = -log(-log u_i),  u_i = uniform from Philox4x32 with key s and counter (i // 4, t), output i % 4
              (computed in log2 units, which scales and shifts every score of a row alike)
    logprob = z_token - logsumexp_{i in K} z_i   (greedy rows: of x / 1)
Gumbel-max draws token i with probability softmax(z)_i restricted to K. The noise of token i depends only on
(seed, step, i): a row's draw is the same at any batch position, beside any rows, however the vocabulary is
split across programs.

Shapes and dtypes (not in place): logits [B, V] fp32 / bf16 / fp16 with a contiguous last dim; temperature
[B] fp32; seeds, offsets [B] int64; top_k [B] int32 (0 = off); top_p [B] fp32 (1 = off); min_p [B] fp32
(0 = off); out [B] int64; logprobs_out [B] fp32.

Plain path (no filter tensor given): grid (B, chunks) programs each reduce a slice of the vocabulary to
its winner (score, token) and, for logprobs, its (max, sum exp); a (B,) merge picks the winner of winners.
Logits are read once. The filter path lives in sampling_filter.py; the noise and the scan, shared by every
sampling kernel, in gumbel.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritium.autotune import next_pow2, tuned
from tritium.kernels.gumbel import NEG, scan_chunk

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


# variants must not depend on step sizes (autotune.SPECIALIZATION)
@triton.jit(do_not_specialize_on_alignment=["temp_ptr", "seed_ptr", "step_ptr"])
def _sample_partial_kernel(
    logits_ptr,  # [B, V] fp32/bf16/fp16, last dim contiguous
    stride_row,  # elements between rows of logits
    temp_ptr,  # [B] fp32
    seed_ptr,  # [B] int64
    step_ptr,  # [B] int64
    part_f_ptr,  # [B, C, 3] fp32 out: best score, chunk max z, sum exp(z - chunk max)
    part_i_ptr,  # [B, C] int32 out: best token
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
    part = part_f_ptr + (row * tl.num_programs(1) + c) * 3
    tl.store(part, win)
    tl.store(part_i_ptr + row * tl.num_programs(1) + c, tok)
    if STATS:
        tl.store(part + 1, m)
        tl.store(part + 2, s)


@triton.jit
def merge_row(part_f_ptr, part_i_ptr, logits_ptr, stride_row, temp_ptr, out_ptr, lp_ptr, row, C,
              STATS: tl.constexpr, CPAD: tl.constexpr):
    """Row `row`'s token (the winner of its C chunk winners, lowest chunk among ties) and, if STATS, its
    logprob from the chunks' (max, sum exp). part_f [B, C, 3], part_i [B, C] as _sample_partial_kernel writes."""
    c = tl.arange(0, CPAD)
    cm = c < C
    part = part_f_ptr + (row * C + c) * 3
    sc = tl.load(part, mask=cm, other=float("-inf"))
    best = tl.max(sc)
    pick = tl.minimum(tl.min(tl.where(cm & (sc == best), c, CPAD)), C - 1)  # lowest chunk among ties
    tok = tl.load(part_i_ptr + row * C + pick)
    tl.store(out_ptr + row, tok.to(tl.int64))
    if STATS:
        t = tl.load(temp_ptr + row)
        z = tl.load(logits_ptr + row * stride_row + tok).to(tl.float32) * (1.0 / tl.where(t > 0, t, 1.0))
        m = tl.load(part + 1, mask=cm, other=NEG)
        s = tl.load(part + 2, mask=cm, other=0.0)
        big = tl.max(m)
        tl.store(lp_ptr + row, z - big - tl.log(tl.sum(s * tl.exp(m - big))))


@triton.jit
def _sample_merge_kernel(
    part_f_ptr,  # [B, C, 3] fp32 from _sample_partial_kernel
    part_i_ptr,  # [B, C] int32
    logits_ptr,  # [B, V] (if STATS: the winner's logit)
    stride_row,
    temp_ptr,  # [B] fp32
    out_ptr,  # [B] int64 out: token
    lp_ptr,  # [B] fp32 out: logprob (if STATS)
    C,  # chunks per row
    STATS: tl.constexpr,
    CPAD: tl.constexpr,  # next_pow2(C)
):
    merge_row(part_f_ptr, part_i_ptr, logits_ptr, stride_row, temp_ptr, out_ptr, lp_ptr,
              tl.program_id(0).to(tl.int64), C, STATS, CPAD)


_PARTIAL = tuned(_sample_partial_kernel, CONFIGS, key=["chunk", "row_bucket", "V"], name="sample_partial")


def _check_vec(name, t, n, dtype, device):
    if not isinstance(t, torch.Tensor) or t.dtype != dtype or t.shape != (n,) or t.device != device:
        got = (tuple(t.shape), t.dtype, str(t.device)) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"sample: {name} must be a [{n}] {dtype} tensor on {device}, got {got}")
    if n > 1 and t.stride(0) != 1:
        raise ValueError(f"sample: {name} must be contiguous")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def plan_chunks(B: int, V: int) -> tuple[int, int]:
    """(chunks per row, tokens per chunk) of the plain path: enough programs to fill the GPU. Depends on
    the batch bucket; draws do not depend on it."""
    n = max(1, min(_cdiv(TARGET_PROGRAMS, next_pow2(B)), _cdiv(V, CHUNK_QUANTUM)))
    chunk = _cdiv(_cdiv(V, n), CHUNK_QUANTUM) * CHUNK_QUANTUM
    return _cdiv(V, chunk), chunk


def sample(logits, temperature, seeds, offsets, *, top_k=None, top_p=None, min_p=None, out=None,
           logprobs_out=None, config: triton.Config | None = None):
    """Draw one token per row (see the module docstring). Returns `out` ([B] int64). CUDA-graph safe.
    `config` launches the main (partial) kernel with one config from CONFIGS (or sampling_filter's
    FILTER_CONFIGS when a filter is given) instead of the tuned one."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError("sample: logits must be a 2-D [batch, vocab] tensor")
    if logits.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"sample: logits dtype {logits.dtype} not in fp32/bf16/fp16")
    B, V = logits.shape
    if V < 1 or V >= 2**31 - 8 or (V > 1 and logits.stride(1) != 1):
        raise ValueError("sample: logits need 1 <= vocab < 2**31 and a contiguous last dim")
    dev = logits.device
    _check_vec("temperature", temperature, B, torch.float32, dev)
    _check_vec("seeds", seeds, B, torch.int64, dev)
    _check_vec("offsets", offsets, B, torch.int64, dev)
    for name, t, dt in (("top_k", top_k, torch.int32), ("top_p", top_p, torch.float32),
                        ("min_p", min_p, torch.float32)):
        if t is not None:  # None: no row uses this filter
            _check_vec(name, t, B, dt, dev)
    if out is None:
        out = torch.empty(B, dtype=torch.int64, device=dev)
    _check_vec("out", out, B, torch.int64, dev)
    if logprobs_out is not None:
        _check_vec("logprobs_out", logprobs_out, B, torch.float32, dev)
    if B == 0:
        return out
    if top_k is not None or top_p is not None or min_p is not None:
        from tritium.kernels.sampling_filter import sample_filtered  # (it imports this module)

        return sample_filtered(logits, temperature, seeds, offsets, top_k, top_p, min_p, out, logprobs_out, config)
    stats = logprobs_out is not None
    n, chunk = plan_chunks(B, V)
    part_f = torch.empty((B, n, 3), dtype=torch.float32, device=dev)
    part_i = torch.empty((B, n), dtype=torch.int32, device=dev)
    _PARTIAL((B, n), logits, logits.stride(0), temperature, seeds, offsets, part_f, part_i, V, chunk,
             next_pow2(B), STATS=stats, config=config)
    _sample_merge_kernel[(B,)](part_f, part_i, logits, logits.stride(0), temperature, out,
                               logprobs_out if stats else part_f, n, STATS=stats, CPAD=next_pow2(n))
    return out


def sample_probs_ref(logits, temperature, *, top_k=None, top_p=None, min_p=None):
    """[B, V] fp32: the distribution each row is drawn from (greedy rows: one-hot at the argmax), and
    [B, V] fp32 log-probabilities used for logprobs (softmax over the kept set; greedy rows at T = 1)."""
    from tritium.kernels.sampling_threshold import keep_mask_ref  # (it imports this module)

    x = logits.float()
    greedy = temperature <= 0
    z = x / torch.where(greedy, 1.0, temperature)[:, None]
    keep = keep_mask_ref(z, top_k, top_p, min_p)
    logp = torch.log_softmax(z.masked_fill(~keep, float("-inf")), dim=-1)
    onehot = torch.nn.functional.one_hot(x.argmax(-1), x.shape[1]).float()
    return torch.where(greedy[:, None], onehot, logp.exp()), logp


def sample_ref(logits, temperature, seeds, offsets, *, top_k=None, top_p=None, min_p=None, out=None,
               logprobs_out=None):
    """Plain PyTorch (fp32): softmax, filter, torch.multinomial seeded by (seed, offset). Its draws differ
    from the kernel's; it defines the distribution. Returns [B] int64 token ids."""
    probs, logp = sample_probs_ref(logits, temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    toks = torch.empty(logits.shape[0], dtype=torch.int64)
    for b in range(logits.shape[0]):
        gen = torch.Generator().manual_seed((int(seeds[b]) * 1_000_003 + int(offsets[b])) % 2**63)
        toks[b] = torch.multinomial(probs[b].cpu(), 1, generator=gen)[0]
    toks = toks.to(logits.device)
    if out is not None:
        out.copy_(toks)
    if logprobs_out is not None:
        logprobs_out.copy_(logp.gather(-1, toks[:, None])[:, 0])
    return toks
