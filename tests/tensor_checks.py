"""Shared test helpers: the one tolerance table, comparisons against fp32 references, and input makers.

Tolerances are relative (||out - ref|| / ||ref||) plus an elementwise check scaled by the reference's
magnitude, per dtype of the kernel's inputs/outputs. bf16 values are only tested on the GPU.
"""
from __future__ import annotations

import torch

# dtype -> (relative L2 error bound, elementwise atol as a fraction of max|ref|)
TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 4e-3),
    torch.bfloat16: (1.6e-2, 3e-2),
}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype | None = None, scale: float = 1.0):
    """Check out against an fp32/fp64 reference at the tolerance of `dtype` (out's dtype by default),
    loosened by `scale` for ops that accumulate longer chains of rounding."""
    dtype = dtype or out.dtype
    rtol, atol_frac = TOLERANCES[dtype]
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), "output has NaN/inf"
    err = rel_err(out, ref)
    assert err <= rtol * scale, f"relative error {err:.3g} > {rtol * scale:.3g} ({dtype})"
    bound = atol_frac * scale * ref.double().abs().max().clamp_min(1e-30)
    worst = (out.double() - ref.double()).abs().max()
    assert worst <= bound, f"max abs error {worst.item():.3g} > {bound.item():.3g} ({dtype})"


def randn(*shape, dtype=torch.float32, device="cpu", scale: float = 1.0, generator=None) -> torch.Tensor:
    """Fresh standard-normal data (never zeros), made in fp32 then cast."""
    return (torch.randn(*shape, generator=generator, device=device) * scale).to(dtype)
