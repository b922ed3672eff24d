"""SiLU-and-mul, the gated MLP activation of Qwen3 / Llama.

    x [T, 2F] = [a | b]  ->  y [T, F] = silu(a) * b = a * sigmoid(a) * b

computed in fp32 and rounded once to x's dtype. x: fp16, bf16 or fp32, rows of any stride with a
contiguous last dim (e.g. the output of a fused gate|up projection); out [T, F] likewise.
Tiled in 2-D over (rows, columns) so both a large T and a large F fill the machine.
Full tiles (F % BLOCK_F == 0, T % BLOCK_T == 0: EVEN_N / EVEN_ROWS heuristics, per config) load and
store with no mask; index math is 32-bit unless an offset can pass 2^31.
Under Triton's CPU interpreter a launch without config= runs INTERPRET_CONFIG with its blocks cut to
next_pow2 of T and F: many rows per program, as the interpreter's cost is per program and per op.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritium.autotune import needs_int64, next_pow2, tile_mask, tuned
from tritium.platform import INTERPRET

CONFIGS = [
    triton.Config({"BLOCK_T": 1, "BLOCK_F": 1024}, num_warps=4),
    triton.Config({"BLOCK_T": 1, "BLOCK_F": 2048}, num_warps=8),
    triton.Config({"BLOCK_T": 2, "BLOCK_F": 1024}, num_warps=4),
    triton.Config({"BLOCK_T": 4, "BLOCK_F": 1024}, num_warps=8),
    triton.Config({"BLOCK_T": 4, "BLOCK_F": 512}, num_warps=4),
    triton.Config({"BLOCK_T": 8, "BLOCK_F": 256}, num_warps=4),
    # Launch-bound decode (1-64 tokens): more, shorter programs.
    triton.Config({"BLOCK_T": 1, "BLOCK_F": 512}, num_warps=2),
]
# The interpreter's config (never used on the GPU): up to 128 rows x 1024 columns per program (a 329-token
# prefill at F <= 1024 is 3 programs instead of 329).
INTERPRET_CONFIG = triton.Config({"BLOCK_T": 128, "BLOCK_F": 1024}, num_warps=8)
KEY = ["n_cols", "rows_bucket"]
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _silu_and_mul_kernel(
    x_ptr,  # [T, 2F] gate | up; last dim contiguous
    y_ptr,  # [T, F] output; last dim contiguous
    n_rows,  # T
    n_cols,  # F (autotune key)
    rows_bucket,  # next_pow2(T) (autotune key)
    stride_xt,  # x row stride
    stride_yt,  # y row stride
    BLOCK_T: tl.constexpr,
    BLOCK_F: tl.constexpr,
    EVEN_N: tl.constexpr,  # F % BLOCK_F == 0: no column mask (heuristic)
    EVEN_ROWS: tl.constexpr,  # T % BLOCK_T == 0: no row mask (heuristic)
    OFFS_64: tl.constexpr,  # some element offset may pass 2^31 (launcher check): 64-bit index math
):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    # Full tiles load and store with no mask at all, as Inductor's size-specialised kernels do; a partial
    # tile tests only the bound that can fail.
    FULL: tl.constexpr = EVEN_N and EVEN_ROWS
    if not FULL:
        mask = tile_mask(rows, cols, n_rows, n_cols, EVEN_ROWS, EVEN_N)
    if OFFS_64:  # only when T x 2F can pass 2^31 elements
        rows = rows.to(tl.int64)
    xp = x_ptr + (rows * stride_xt)[:, None] + cols[None, :]
    yp = y_ptr + (rows * stride_yt)[:, None] + cols[None, :]
    if FULL:
        a = tl.load(xp).to(tl.float32)
        b = tl.load(xp + n_cols).to(tl.float32)
    else:
        a = tl.load(xp, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(xp + n_cols, mask=mask, other=0.0).to(tl.float32)
    y = (a * tl.sigmoid(a) * b).to(y_ptr.dtype.element_ty)
    if FULL:
        tl.store(yp, y)
    else:
        tl.store(yp, y, mask=mask)


# EVEN_* depend on the config's blocks: heuristics, evaluated per launch after the config is chosen.
HEURISTICS = {
    "EVEN_N": lambda a: a["n_cols"] % a["BLOCK_F"] == 0,
    "EVEN_ROWS": lambda a: a["n_rows"] % a["BLOCK_T"] == 0,
}
_kernel = tuned(_silu_and_mul_kernel, CONFIGS, key=KEY, interpret_config=INTERPRET_CONFIG, heuristics=HEURISTICS)


def silu_and_mul(x, *, out=None, config=None):
    """silu(x[:, :F]) * x[:, F:] for x [T, 2F]; returns [T, F] in x's dtype."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"x must be a 2-D tensor [T, 2F], got {getattr(x, 'shape', type(x).__name__)}")
    if x.dtype not in DTYPES:
        raise ValueError(f"x has dtype {x.dtype}; supported: fp16, bf16, fp32")
    if x.shape[1] % 2:
        raise ValueError(f"x's last dim must be even (gate | up), got {x.shape[1]}")
    if x.numel() and x.stride(1) != 1:
        raise ValueError(f"x must have a contiguous last dimension (stride {x.stride(1)})")
    n, f = x.shape[0], x.shape[1] // 2
    if out is None:
        out = torch.empty((n, f), dtype=x.dtype, device=x.device)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n, f):
        raise ValueError(f"out must be a tensor of shape {(n, f)}, got {getattr(out, 'shape', None)}")
    if out.dtype != x.dtype or out.device != x.device:
        raise ValueError(f"out ({out.dtype}, {out.device}) must match x ({x.dtype}, {x.device})")
    if out.numel() and out.stride(1) != 1:
        raise ValueError(f"out must have a contiguous last dimension (stride {out.stride(1)})")
    if out.numel() == 0:
        return out
    if config is None and INTERPRET:  # the interpreter's tile, no larger than the problem
        cap = INTERPRET_CONFIG.kwargs
        config = triton.Config(
            {"BLOCK_T": min(cap["BLOCK_T"], next_pow2(n)), "BLOCK_F": min(cap["BLOCK_F"], next_pow2(f))},
            num_warps=INTERPRET_CONFIG.num_warps,
        )
    _kernel(
        lambda meta: (triton.cdiv(n, meta["BLOCK_T"]), triton.cdiv(f, meta["BLOCK_F"])),
        x, out, n, f, next_pow2(n), x.stride(0), out.stride(0),
        OFFS_64=needs_int64(((n, 2 * f), (x.stride(0), 1)), ((n, f), (out.stride(0), 1))), config=config,
    )
    return out


def silu_and_mul_ref(x):
    """fp32 reference: silu(a) * b, rounded to x's dtype."""
    f = x.shape[-1] // 2
    xf = x.float()
    return (torch.nn.functional.silu(xf[..., :f]) * xf[..., f:]).to(x.dtype)
