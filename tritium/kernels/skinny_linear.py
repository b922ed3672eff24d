"""Linear layer for a few rows (a small decode batch): y = x @ W^T, the matmul as a stream of W.

    x    [M, K]  fp16 / bf16 / fp32, M <= MAX_ROWS, last dim contiguous (rows may be strided);
                 [M, 2K] = [a | b] with gated=True: the input is silu(a) * b (SiLU-and-mul fused in)
    w    [N, K]  x's dtype, contiguous (an nn.Linear weight)
    bias [N]     x's dtype, optional
    norm         (weight [K] any float dtype, eps), optional: the input is rms_norm(x, weight, eps)
    out  [M, N]  x's dtype, last dim contiguous (new tensor, or `out=`; with accumulate=True, out += y in place)

    y[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n]), accumulated in fp32, rounded once to x's dtype.

gated=True is the MLP's down projection on the gate / up projection's output: each program computes the
silu(a) * b chunk it needs (rounded to the dtype as silu_and_mul rounds it, so the result is bit-identical
to silu_and_mul then this kernel) instead of a launch of its own writing [M, K] for the next to read.

At a few rows the op moves 2*N*K bytes of W and almost nothing else, so it is bound by how fast W streams
in. cuBLAS's few-row kernels (64 x 8 tiles) ran the Qwen3-0.6B projections at batch 1 at 0.7-1.6 TB/s on an
H100: a 4-12 MB weight in 64-row tiles leaves most SMs with one short tile. Here program p owns BLOCK_N rows
of W and walks K in chunks, loading a [BLOCK_N, BLOCK_K] tile of W (each row a contiguous run) and x's
[BLOCK_M, BLOCK_K] chunk; the product is a broadcast multiply summed over K in fp32 (no tl.dot, whose 16-row
minimum would waste the tile on padding), so BLOCK_N can be small and the grid N / BLOCK_N has hundreds of
programs even at N = 1024: enough loads in flight on every SM without split-K.

A config fixes BLOCK_N and the broadcast's size ELEMS = BLOCK_M * BLOCK_N * BLOCK_K (the registers a program
holds); BLOCK_K follows from the row bucket (heuristic), so one config space serves 1 to MAX_ROWS rows.
Each output element's sum runs in the same order whatever M is within its bucket (M is not a constexpr): a
row's result does not depend on the batch it is in, so a CUDA graph's padded rows change nothing.
Launched with programmatic dependent launch (autotune's PDL), a program loads its first W chunk, which no
kernel writes, before it waits for the kernel before it: the weight streams in during that kernel's tail.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritium.autotune import next_pow2, pdl_launch, pdl_wait, tuned
from tritium.kernels.activation import silu_and_mul_ref
from tritium.kernels.rmsnorm import rms_norm_ref

__all__ = ["skinny_linear", "skinny_linear_ref", "CONFIGS", "MAX_ROWS"]

MAX_ROWS = 16  # the largest M the kernel takes; more rows go to a matmul
CONFIGS = [
    triton.Config({"BLOCK_N": 4, "ELEMS": 4096}, num_warps=4),
    triton.Config({"BLOCK_N": 8, "ELEMS": 8192}, num_warps=4),
    triton.Config({"BLOCK_N": 4, "ELEMS": 8192}, num_warps=4),
    triton.Config({"BLOCK_N": 16, "ELEMS": 8192}, num_warps=8),
    triton.Config({"BLOCK_N": 2, "ELEMS": 4096}, num_warps=4),
    triton.Config({"BLOCK_N": 8, "ELEMS": 16384}, num_warps=8),
]
# The interpreter's config (never used on the GPU): few, wide programs, as its cost is per program and op.
INTERPRET_CONFIG = triton.Config({"BLOCK_N": 64, "ELEMS": 1 << 17}, num_warps=4)
KEY = ["BLOCK_M", "N", "K", "GATED", "NORM"]
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _input_chunk(x_rows, k, ok, K: tl.constexpr, GATED: tl.constexpr, dtype: tl.constexpr):
    """x's [BLOCK_M, BLOCK_K] chunk at columns k (masked by ok), silu(a) * b of [a | b] when GATED, in dtype."""
    x = tl.load(x_rows + k[None, :], mask=ok, other=0.0)
    if GATED:  # silu_and_mul's expression and rounding
        a = x.to(tl.float32)
        b = tl.load(x_rows + K + k[None, :], mask=ok, other=0.0).to(tl.float32)
        x = (a * tl.sigmoid(a) * b).to(dtype)
    return x


@triton.jit
def _w_chunk(w_rows, k, n_ok, K: tl.constexpr, EVEN: tl.constexpr):
    """W's [BLOCK_N, BLOCK_K] tile at columns k (w_rows [BLOCK_N, 1] row pointers)."""
    if EVEN:
        return tl.load(w_rows + k[None, :])
    return tl.load(w_rows + k[None, :], mask=n_ok[:, None] & (k < K)[None, :], other=0.0)


@triton.jit
def _chunk_product(x_rows, w, k, m_ok, rstd, norm_ptr, K: tl.constexpr, GATED: tl.constexpr,
                   NORM: tl.constexpr, EVEN: tl.constexpr, dtype: tl.constexpr):
    """[BLOCK_M, BLOCK_N] fp32: the input's chunk at columns k times W's tile w, summed over the chunk."""
    x_ok = m_ok[:, None] if EVEN else m_ok[:, None] & (k < K)[None, :]
    x = _input_chunk(x_rows, k, x_ok, K, GATED, dtype)  # [BLOCK_M, BLOCK_K]
    if NORM:  # rms_norm's roundings: rnd(rnd(x * rstd) * weight)
        g = tl.load(norm_ptr + k, mask=k < K, other=0.0).to(tl.float32)
        x = (x.to(tl.float32) * rstd[:, None]).to(dtype).to(tl.float32)
        x = (x * g[None, :]).to(dtype)
    prod = x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :]  # [BLOCK_M, BLOCK_N, BLOCK_K]
    return tl.sum(prod, axis=2)


@triton.jit(do_not_specialize=["M"])  # one variant per row bucket, whatever the batch inside it
def _skinny_linear_kernel(
    x_ptr,  # [M, K] (or [M, 2K] when GATED), rows strided
    w_ptr,  # [N, K] contiguous
    y_ptr,  # [M, N], rows strided (read first when ACCUMULATE)
    bias_ptr,  # [N] (read when HAS_BIAS)
    norm_ptr,  # [K] RMSNorm weight (read when NORM)
    M,  # rows, <= BLOCK_M
    stride_xm, stride_ym,
    N: tl.constexpr,
    K: tl.constexpr,
    EPS: tl.constexpr,  # RMSNorm epsilon
    HAS_BIAS: tl.constexpr,
    GATED: tl.constexpr,  # x is [a | b], the input silu(a) * b
    NORM: tl.constexpr,  # the input is RMSNorm(x) * norm weight
    ACCUMULATE: tl.constexpr,  # y = rnd(y + rnd(x @ W^T))
    BLOCK_M: tl.constexpr,  # next_pow2(M)
    BLOCK_N: tl.constexpr,  # rows of W per program
    ELEMS: tl.constexpr,  # BLOCK_M * BLOCK_N * BLOCK_K (config)
    BLOCK_K: tl.constexpr,  # heuristic: ELEMS // (BLOCK_M * BLOCK_N), at most next_pow2(K)
    EVEN: tl.constexpr,  # heuristic: N % BLOCK_N == 0 and K % BLOCK_K == 0 (no masks on W)
    PDL: tl.constexpr,  # launched as a programmatic dependent launch: wait for the kernel before to finish
):
    dtype = y_ptr.dtype.element_ty
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < N
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * K  # [BLOCK_N, 1]
    x_rows = x_ptr + offs_m[:, None] * stride_xm  # [BLOCK_M, 1]
    # W is no kernel's output: its first chunk streams in before the wait for the kernel before (PDL)
    w_first = _w_chunk(w_rows, offs_k, n_ok, K, EVEN)
    pdl_wait(PDL)
    rstd = 0.0
    if NORM:  # every program takes the rows' mean square itself: x is a few KB, hot in L2 after the first
        sq = tl.zeros([BLOCK_M], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + offs_k
            x = _input_chunk(x_rows, k, m_ok[:, None] & (k < K)[None, :], K, GATED, dtype).to(tl.float32)
            sq += tl.sum(x * x, axis=1)
        rstd = tl.rsqrt(sq / K + EPS)  # [BLOCK_M]
    acc = _chunk_product(x_rows, w_first, offs_k, m_ok, rstd, norm_ptr, K, GATED, NORM, EVEN, dtype)
    for k0 in range(BLOCK_K, K, BLOCK_K):
        k = k0 + offs_k
        acc += _chunk_product(x_rows, _w_chunk(w_rows, k, n_ok, K, EVEN), k, m_ok, rstd, norm_ptr, K, GATED,
                              NORM, EVEN, dtype)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    y = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    y_ok = m_ok[:, None] & n_ok[None, :]
    out = acc.to(dtype)
    if ACCUMULATE:  # the residual add as the model does it after a separate projection (each program owns its columns)
        out = (out.to(tl.float32) + tl.load(y, mask=y_ok, other=0.0).to(tl.float32)).to(dtype)
    tl.store(y, out, mask=y_ok)


def _block_k(a) -> int:
    return max(16, min(a["ELEMS"] // (a["BLOCK_M"] * a["BLOCK_N"]), next_pow2(a["K"])))


HEURISTICS = {
    "BLOCK_K": _block_k,
    "EVEN": lambda a: a["N"] % a["BLOCK_N"] == 0 and a["K"] % _block_k(a) == 0,
}
# Trials stream through copies of W (a model's layers each read their own weight once per step); an
# accumulating call's out (the residual stream) is tuned on a copy, so trials do not add into it.
_kernel = tuned(_skinny_linear_kernel, CONFIGS, key=KEY, interpret_config=INTERPRET_CONFIG, heuristics=HEURISTICS,
                tune_on_copies=("y_ptr",), rotate=("w_ptr",), name="skinny_linear")


def skinny_linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, *, gated: bool = False,
                  norm: tuple[torch.Tensor, float] | None = None, out: torch.Tensor | None = None,
                  accumulate: bool = False, config: triton.Config | None = None) -> torch.Tensor:
    """x [M, K] @ w[N, K]^T (+ bias) -> [M, N] for 1 <= M <= MAX_ROWS (module doc). gated: x = [a | b] is
    [M, 2K] and the input silu(a) * b; norm = (weight [K], eps): the input is rms_norm(x, weight, eps);
    accumulate: out += the product (out required; the product rounded first). `config` forces one of CONFIGS."""
    name = "skinny_linear"
    for arg, t in (("x", x), ("w", w)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise ValueError(f"{name}: {arg} must be a 2-D tensor, got {getattr(t, 'shape', type(t).__name__)}")
    m, k = x.shape[0], w.shape[1]
    n = w.shape[0]
    if not 1 <= m <= MAX_ROWS:
        raise ValueError(f"{name}: x has {m} rows; this kernel takes 1 to {MAX_ROWS} (use a matmul for more)")
    if x.dtype not in DTYPES or w.dtype != x.dtype:
        raise ValueError(f"{name}: x ({x.dtype}) and w ({w.dtype}) must share one of fp16, bf16, fp32")
    if x.shape[1] != (2 * k if gated else k):
        raise ValueError(f"{name}: x has {x.shape[1]} columns but w is {tuple(w.shape)} (expected "
                         f"{'[a | b] of 2 x ' if gated else ''}{k} columns)")
    if w.device != x.device:
        raise ValueError(f"{name}: x is on {x.device}, w on {w.device}")
    if x.stride(1) != 1 or not w.is_contiguous():
        raise ValueError(f"{name}: x needs a contiguous last dim and w must be contiguous")
    _check_vector("bias", bias, n, x)
    norm_weight, eps = norm if norm is not None else (None, 0.0)
    _check_vector("norm weight", norm_weight, k, x, same_dtype=False)
    if not float(eps) >= 0:
        raise ValueError(f"{name}: eps must be >= 0, got {eps}")
    if out is None:
        if accumulate:
            raise ValueError(f"{name}: accumulate adds into out, so out is required")
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    elif (not isinstance(out, torch.Tensor) or tuple(out.shape) != (m, n) or out.dtype != x.dtype
          or out.device != x.device or out.stride(1) != 1):
        raise ValueError(f"{name}: out must be a [{m}, {n}] {x.dtype} tensor on {x.device} with a contiguous "
                         f"last dim, got {getattr(out, 'shape', type(out).__name__)}")
    _kernel(
        lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),),
        x, w, out, w if bias is None else bias, w if norm_weight is None else norm_weight, m, x.stride(0),
        out.stride(0), N=n, K=k, EPS=float(eps), HAS_BIAS=bias is not None, GATED=gated, NORM=norm is not None,
        ACCUMULATE=accumulate, BLOCK_M=next_pow2(m), config=config, **pdl_launch(),
    )
    return out


def _check_vector(what: str, v, size: int, x: torch.Tensor, same_dtype: bool = True) -> None:
    if v is None:
        return
    if (not isinstance(v, torch.Tensor) or tuple(v.shape) != (size,) or v.device != x.device or v.stride(0) != 1
            or (v.dtype != x.dtype if same_dtype else not v.dtype.is_floating_point)):
        raise ValueError(f"skinny_linear: {what} must be a contiguous [{size}] {x.dtype if same_dtype else 'float'} "
                         f"tensor on {x.device}, got {getattr(v, 'shape', type(v).__name__)}")


def skinny_linear_ref(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, gated: bool = False,
                      norm: tuple[torch.Tensor, float] | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 reference: x @ w^T (+ bias), rounded to x's dtype; gated: x = silu_and_mul_ref(x) first; norm: then
    x = rms_norm_ref(x, *norm); out given: returns out + the rounded product (what accumulate leaves in out)."""
    if gated:
        x = silu_and_mul_ref(x)
    if norm is not None:
        x = rms_norm_ref(x, *norm)
    y = x.float() @ w.float().t()
    y = (y if bias is None else y + bias.float()).to(x.dtype)
    return y if out is None else (out.float() + y.float()).to(x.dtype)
