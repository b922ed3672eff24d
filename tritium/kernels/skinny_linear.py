"""Linear layer for a few rows (a small decode batch): y = x @ W^T, the matmul as a stream of W.

    x    [M, K]  fp16 / bf16 / fp32, M <= MAX_ROWS, last dim contiguous (rows may be strided)
    w    [N, K]  x's dtype, contiguous (an nn.Linear weight)
    bias [N]     x's dtype, optional
    out  [M, N]  x's dtype, last dim contiguous (new tensor, or `out=`; not in place)

    y[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n]), accumulated in fp32, rounded once to x's dtype.

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
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritium.autotune import next_pow2, tuned

__all__ = ["skinny_linear", "skinny_linear_ref", "CONFIGS", "MAX_ROWS"]

MAX_ROWS = 16  # the largest M the kernel takes; more rows go to cuBLAS (a real matmul by then)
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
KEY = ["BLOCK_M", "N", "K"]
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit(do_not_specialize=["M"])  # one variant per row bucket, whatever the batch inside it
def _skinny_linear_kernel(
    x_ptr,  # [M, K], rows strided
    w_ptr,  # [N, K] contiguous
    y_ptr,  # [M, N], rows strided
    bias_ptr,  # [N] (read when HAS_BIAS)
    M,  # rows, <= BLOCK_M
    stride_xm, stride_ym,
    N: tl.constexpr,
    K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,  # next_pow2(M)
    BLOCK_N: tl.constexpr,  # rows of W per program
    ELEMS: tl.constexpr,  # BLOCK_M * BLOCK_N * BLOCK_K (config)
    BLOCK_K: tl.constexpr,  # heuristic: ELEMS // (BLOCK_M * BLOCK_N), at most next_pow2(K)
    EVEN: tl.constexpr,  # heuristic: N % BLOCK_N == 0 and K % BLOCK_K == 0 (no masks on W)
):
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < N
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * K  # [BLOCK_N, 1]
    x_rows = x_ptr + offs_m[:, None] * stride_xm  # [BLOCK_M, 1]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_k
        if EVEN:
            w = tl.load(w_rows + k[None, :])  # [BLOCK_N, BLOCK_K]
            x = tl.load(x_rows + k[None, :], mask=m_ok[:, None], other=0.0)  # [BLOCK_M, BLOCK_K]
        else:
            k_ok = k < K
            w = tl.load(w_rows + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            x = tl.load(x_rows + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        prod = x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :]  # [BLOCK_M, BLOCK_N, BLOCK_K]
        acc += tl.sum(prod, axis=2)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    y = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def _block_k(a) -> int:
    return max(16, min(a["ELEMS"] // (a["BLOCK_M"] * a["BLOCK_N"]), next_pow2(a["K"])))


HEURISTICS = {
    "BLOCK_K": _block_k,
    "EVEN": lambda a: a["N"] % a["BLOCK_N"] == 0 and a["K"] % _block_k(a) == 0,
}
# Trials stream through copies of W (a model's layers each read their own weight once per step).
_kernel = tuned(_skinny_linear_kernel, CONFIGS, key=KEY, interpret_config=INTERPRET_CONFIG,
                heuristics=HEURISTICS, rotate=("w_ptr",), name="skinny_linear")


def skinny_linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, *, out: torch.Tensor | None = None,
                  config: triton.Config | None = None) -> torch.Tensor:
    """x [M, K] @ w[N, K]^T (+ bias) -> [M, N] for 1 <= M <= MAX_ROWS (module doc); `config` forces one of CONFIGS."""
    name = "skinny_linear"
    for arg, t in (("x", x), ("w", w)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise ValueError(f"{name}: {arg} must be a 2-D tensor, got {getattr(t, 'shape', type(t).__name__)}")
    m, k = x.shape
    n = w.shape[0]
    if not 1 <= m <= MAX_ROWS:
        raise ValueError(f"{name}: x has {m} rows; this kernel takes 1 to {MAX_ROWS} (use a matmul for more)")
    if x.dtype not in DTYPES or w.dtype != x.dtype:
        raise ValueError(f"{name}: x ({x.dtype}) and w ({w.dtype}) must share one of fp16, bf16, fp32")
    if w.shape[1] != k:
        raise ValueError(f"{name}: x has {k} columns but w is {tuple(w.shape)} (expected [N, {k}])")
    if w.device != x.device:
        raise ValueError(f"{name}: x is on {x.device}, w on {w.device}")
    if x.stride(1) != 1 or not w.is_contiguous():
        raise ValueError(f"{name}: x needs a contiguous last dim and w must be contiguous")
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (n,)
                             or bias.dtype != x.dtype or bias.device != x.device or bias.stride(0) != 1):
        raise ValueError(f"{name}: bias must be a contiguous [{n}] {x.dtype} tensor on {x.device}, got "
                         f"{getattr(bias, 'shape', type(bias).__name__)}")
    if out is None:
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    elif (not isinstance(out, torch.Tensor) or tuple(out.shape) != (m, n) or out.dtype != x.dtype
          or out.device != x.device or out.stride(1) != 1):
        raise ValueError(f"{name}: out must be a [{m}, {n}] {x.dtype} tensor on {x.device} with a contiguous "
                         f"last dim, got {getattr(out, 'shape', type(out).__name__)}")
    _kernel(
        lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),),
        x, w, out, w if bias is None else bias, m, x.stride(0), out.stride(0), N=n, K=k, HAS_BIAS=bias is not None,
        BLOCK_M=next_pow2(m), config=config,
    )
    return out


def skinny_linear_ref(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 reference: x @ w^T (+ bias), rounded to x's dtype."""
    y = x.float() @ w.float().t()
    return (y if bias is None else y + bias.float()).to(x.dtype)
