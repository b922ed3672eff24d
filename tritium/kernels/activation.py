"""SiLU-and-mul, the gated MLP activation of Qwen3 / Llama.

    x [T, 2F] = [a | b]  ->  y [T, F] = silu(a) * b = a * sigmoid(a) * b

computed in fp32 and rounded once to x's dtype. x: fp16, bf16 or fp32, rows of any stride with a
contiguous last dim (e.g. the output of a fused gate|up projection); out [T, F] likewise.
Flat in 1-D, as Inductor's pointwise kernels are: program p computes outputs i = p * XBLOCK + [0, XBLOCK)
of the T * F in row-major order, row = i // F and col = i % F (F and the row strides are constexprs, one
compile per layout: the divisions are multiply-shifts, and the compiler sees col contiguous in runs of
gcd(XBLOCK, F), so with 16-aligned rows the loads are 16-byte vectors, as on the 2-D tiles before). Every
program moves the same bytes whatever T and F are; a program may span rows, or a row several programs.
When T * F % XBLOCK == 0 (EVEN heuristic, per config) no load or store is masked; index math is 32-bit
unless an offset can pass 2^31. No cache hints: evict_first on x measured slower on an H200.
Under Triton's CPU interpreter a launch without config= runs INTERPRET_CONFIG with XBLOCK cut to
next_pow2(T * F): few, wide programs, as the interpreter's cost is per program and per op.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritium.autotune import flat_launch, next_pow2, tuned

# Best measured on an H200 (bf16, CUDA graphs, XBLOCK / warps): 512 / 4 at T = 1, 1024 / 8 at T = 16,
# 1024 / 4 at 0.6B T = 16384 and 8B T = 4096, 2048 / 8 at 8B T = 16384; XBLOCK 4096 and 2048 / 4 lost.
CONFIGS = [
    triton.Config({"XBLOCK": 1024}, num_warps=4),
    triton.Config({"XBLOCK": 1024}, num_warps=8),
    triton.Config({"XBLOCK": 2048}, num_warps=8),
    triton.Config({"XBLOCK": 512}, num_warps=4),
    triton.Config({"XBLOCK": 512}, num_warps=8),
    triton.Config({"XBLOCK": 256}, num_warps=2),  # more, shorter programs for launch-bound 1-16 token calls
]
# The interpreter's config (never used on the GPU): 2^17 outputs per program (a 329-token prefill at
# F = 1024 is 3 programs instead of 329 at XBLOCK = 1024).
INTERPRET_CONFIG = triton.Config({"XBLOCK": 131072}, num_warps=8)
KEY = ["F", "rows_bucket"]
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit(do_not_specialize=["n_out"])  # variants must not depend on step sizes (autotune.SPECIALIZATION)
def _silu_and_mul_kernel(
    x_ptr,  # [T, 2F] gate | up; last dim contiguous
    y_ptr,  # [T, F] output; last dim contiguous
    n_out,  # T * F
    rows_bucket,  # next_pow2(T) (autotune key)
    F: tl.constexpr,  # columns of y (autotune key)
    SXT: tl.constexpr,  # x row stride
    SYT: tl.constexpr,  # y row stride
    XBLOCK: tl.constexpr,  # outputs per program
    EVEN: tl.constexpr,  # n_out % XBLOCK == 0: no mask (heuristic)
    OFFS_64: tl.constexpr,  # some element offset may pass 2^31 (launcher check): 64-bit index math
):
    start = tl.program_id(0)
    if OFFS_64:  # only when T x 2F can pass 2^31 elements
        start = start.to(tl.int64)
    i = start * XBLOCK + tl.arange(0, XBLOCK)
    row = i // F
    col = i % F
    xp = x_ptr + row * SXT + col
    yp = y_ptr + row * SYT + col
    # Full blocks load and store with no mask at all, as Inductor's size-specialised kernels do.
    if EVEN:
        a = tl.load(xp).to(tl.float32)
        b = tl.load(xp + F).to(tl.float32)
    else:
        mask = i < n_out
        a = tl.load(xp, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(xp + F, mask=mask, other=0.0).to(tl.float32)
    y = (a * tl.sigmoid(a) * b).to(y_ptr.dtype.element_ty)
    if EVEN:
        tl.store(yp, y)
    else:
        tl.store(yp, y, mask=mask)


# EVEN depends on the config's XBLOCK: a heuristic, evaluated per launch after the config is chosen.
HEURISTICS = {"EVEN": lambda a: a["n_out"] % a["XBLOCK"] == 0}
# Trials stream through copies of x and y, as calls from a model's layers do.
_kernel = tuned(
    _silu_and_mul_kernel, CONFIGS, key=KEY, interpret_config=INTERPRET_CONFIG, heuristics=HEURISTICS,
    rotate=("x_ptr", "y_ptr"), name="silu_and_mul",
)


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
    n_out = n * f
    config, offs_64 = flat_launch(
        n_out, config, INTERPRET_CONFIG, ((n, 2 * f), (x.stride(0), 1)), ((n, f), (out.stride(0), 1)))
    _kernel(
        lambda meta: (triton.cdiv(n_out, meta["XBLOCK"]),),
        x, out, n_out, next_pow2(n), F=f, SXT=x.stride(0), SYT=out.stride(0), OFFS_64=offs_64, config=config,
    )
    return out


def silu_and_mul_ref(x):
    """fp32 reference: silu(a) * b, rounded to x's dtype."""
    f = x.shape[-1] // 2
    xf = x.float()
    return (torch.nn.functional.silu(xf[..., :f]) * xf[..., f:]).to(x.dtype)
