"""RMSNorm: plain, fused with the residual add, and per attention head (Qwen3 q_norm / k_norm).

Math, as transformers 5.x Qwen3RMSNorm computes it (fp32 inside, result in the input dtype):
    n = x * rsqrt(mean(x^2) + eps)            fp32
    y = rnd(rnd(n) * w)                        rnd() = cast to x's dtype; the product is formed in fp32
The inner rnd() reproduces transformers' `weight * hidden.to(input_dtype)`; the outer one is torch's own
rounding of a 16-bit product. Both are no-ops in fp32.

- rms_norm(x [T, H], weight [H], eps) -> y [T, H]
- add_rms_norm(x [T, H], residual [T, H], weight, eps) -> (y, r'): r' = rnd(x + residual) is stored in x's
  dtype and y = rms_norm(r') is computed from that stored value (the residual stream kept in the model
  dtype, as in transformers). residual_out may be `residual` itself (in place) and out may be x.
- head_rms_norm(x [T, heads, D], weight [D], eps) -> y [T, heads, D]: each head vector normalised on its
  own. x and out may be any strided views (e.g. slices of a packed qkv tensor) with a contiguous last
  dim; out may be x (in place).
x / residual / out: fp16, bf16 or fp32, all the same dtype. weight: any float dtype, used in fp32.
All three run one kernel: a tile of ROWS rows x next_pow2(H) columns per program, one pass over memory.
Specialised as Inductor specialises to exact sizes, without losing generality: the size N, eps, the head
count and the strides are constexprs (one compile per model layout; on an H200, against the same kernel
with them as arguments, this took 0.02-0.08 us off the 1.5-2.6 us calls of 1-256 tokens); a tile with
H == next_pow2(H) and rows % ROWS == 0 loads and stores with no mask (EVEN_N / EVEN_ROWS heuristics, per
config); index math is 32-bit unless an offset can pass 2^31.
No L2 eviction hints: on an H200, timed like for like against torch.compile, evict_first on x / residual and
evict_last on the weight cost 4-10% at 1-256 tokens (head rows and rows of 1024 / 4096 alike) and 2-4% at
4096-16384 tokens of 4096, and gained up to 5% only at 8192-16384 rows of 1024 (rms_norm) and 2% for head
rows at 4096 tokens.
Under Triton's CPU interpreter a launch without config= runs INTERPRET_CONFIG / HEAD_INTERPRET_CONFIG, its
ROWS cut to next_pow2(rows): many rows per program, because the interpreter's cost is per program and per
op (masked lanes included), not per byte. The GPU runs the tuned choice from CONFIGS / HEAD_CONFIGS.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritium.autotune import needs_int64, next_pow2, tile_mask, tuned
from tritium.platform import INTERPRET

# Rows of hidden-size width (H = 1000..8192): one to a few rows per program, warps scaled with width.
# Narrow rows (H = 1024 bf16: 2 KiB) also get 4-8 rows per program, so each one moves 8-16 KiB a tensor.
# One row on 2 warps: a launch-bound 16-256 token call gets a program per row, each a short one.
CONFIGS = [
    triton.Config({"ROWS": 1}, num_warps=4),
    triton.Config({"ROWS": 1}, num_warps=2),
    triton.Config({"ROWS": 1}, num_warps=8),
    triton.Config({"ROWS": 1}, num_warps=16),
    triton.Config({"ROWS": 2}, num_warps=4),
    triton.Config({"ROWS": 2}, num_warps=8),
    triton.Config({"ROWS": 4}, num_warps=4),
    triton.Config({"ROWS": 4}, num_warps=8),
    triton.Config({"ROWS": 8}, num_warps=8),
]
# Rows of head_dim width (64..256): many rows per program so each one moves a few KiB. 8-16 rows on 8 warps
# were the fastest at 16-256 tokens of 16 or 32 heads (H200: 1.58-1.59 us at 0.6B 16 tokens, 1.67-1.79 for
# the others).
HEAD_CONFIGS = [
    triton.Config({"ROWS": 8}, num_warps=4),
    triton.Config({"ROWS": 4}, num_warps=2),
    triton.Config({"ROWS": 2}, num_warps=1),
    triton.Config({"ROWS": 16}, num_warps=4),
    triton.Config({"ROWS": 32}, num_warps=8),
    triton.Config({"ROWS": 16}, num_warps=8),
    triton.Config({"ROWS": 8}, num_warps=8),
]
# The interpreter's configs (never used on the GPU): up to 128 rows / 512 head vectors per program, so a
# 329-token prefill's norms run 3 programs instead of 329 (1316-5264 head vectors: 3-11, not 165-658).
INTERPRET_CONFIG = triton.Config({"ROWS": 128}, num_warps=8)
HEAD_INTERPRET_CONFIG = triton.Config({"ROWS": 512}, num_warps=8)
KEY = ["N", "rows_bucket", "HAS_RESIDUAL"]
MAX_COLS = 65536
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit(do_not_specialize=["n_rows"])  # variants must not depend on step sizes (autotune.SPECIALIZATION)
def _rms_norm_kernel(
    x_ptr,  # [T, NH, N] input (NH = 1 for a [T, N] matrix); last dim contiguous
    r_ptr,  # [T, N] residual, read only when HAS_RESIDUAL
    w_ptr,  # [N] weight
    y_ptr,  # [T, NH, N] output
    ro_ptr,  # [T, N] residual output rnd(x + r), written only when HAS_RESIDUAL
    n_rows,  # T * NH
    rows_bucket,  # next_pow2(n_rows) (autotune key)
    N: tl.constexpr,  # normalised size (autotune key)
    SXT: tl.constexpr, SXH: tl.constexpr,  # x strides of dims 0 and 1
    SRT: tl.constexpr,  # residual row stride
    SYT: tl.constexpr, SYH: tl.constexpr,  # y strides of dims 0 and 1
    SROT: tl.constexpr,  # residual-output row stride
    EPS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    NH: tl.constexpr,  # heads per token: row -> (token, head) by a constant (shifts for powers of two)
    BLOCK_N: tl.constexpr,  # next_pow2(N)
    ROWS: tl.constexpr,  # rows per program
    EVEN_N: tl.constexpr,  # N == BLOCK_N: no column mask (heuristic)
    EVEN_ROWS: tl.constexpr,  # n_rows % ROWS == 0: every tile full, no row mask (heuristic)
    OFFS_64: tl.constexpr,  # some element offset may pass 2^31 (launcher check): 64-bit index math
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_N)
    # Full tiles (both flags) load and store with no mask at all, as Inductor's size-specialised kernels do.
    FULL: tl.constexpr = EVEN_N and EVEN_ROWS
    # The weight first: its load overlaps x's instead of following the reduction.
    if EVEN_N:
        w = tl.load(w_ptr + cols).to(tl.float32)
    else:
        w = tl.load(w_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
    if not FULL:
        mask = tile_mask(rows, cols, n_rows, N, EVEN_ROWS, EVEN_N)
    if OFFS_64:  # only when T x row stride can pass 2^31 (long prefills over wide rows)
        rows = rows.to(tl.int64)
    if NH == 1:
        t = rows
        xo = t * SXT
        yo = t * SYT
    else:
        t = rows // NH
        h = rows % NH
        xo = t * SXT + h * SXH
        yo = t * SYT + h * SYH
    x_ptrs = x_ptr + xo[:, None] + cols[None, :]
    if FULL:
        x = tl.load(x_ptrs)
    else:
        x = tl.load(x_ptrs, mask=mask, other=0.0)
    x = x.to(tl.float32)
    if HAS_RESIDUAL:
        r_ptrs = r_ptr + (t * SRT)[:, None] + cols[None, :]
        ro_ptrs = ro_ptr + (t * SROT)[:, None] + cols[None, :]
        if FULL:
            r = tl.load(r_ptrs)
        else:
            r = tl.load(r_ptrs, mask=mask, other=0.0)
        # The residual stream is kept in the model dtype; normalise the rounded sum.
        s = (x + r.to(tl.float32)).to(ro_ptr.dtype.element_ty)
        if FULL:
            tl.store(ro_ptrs, s)
        else:
            tl.store(ro_ptrs, s, mask=mask)
        x = s.to(tl.float32)
    inv = tl.rsqrt(tl.sum(x * x, axis=1) / N + EPS)
    n = (x * inv[:, None]).to(y_ptr.dtype.element_ty).to(tl.float32)
    y = (n * w[None, :]).to(y_ptr.dtype.element_ty)
    y_ptrs = y_ptr + yo[:, None] + cols[None, :]
    if FULL:
        tl.store(y_ptrs, y)
    else:
        tl.store(y_ptrs, y, mask=mask)


# The flags that drop masks: EVEN_ROWS depends on the config's ROWS, so both are heuristics evaluated per
# launch (tuned trials and explicit config= launches alike), after the config is chosen.
HEURISTICS = {
    "EVEN_N": lambda a: a["N"] == a["BLOCK_N"],
    "EVEN_ROWS": lambda a: a["n_rows"] % a["ROWS"] == 0,
}
# In-place calls (out=x, residual_out=residual) are tuned on copies of the outputs: no restore_value, whose
# clone-and-copy-back of x and r the tuner would time with every trial (4 extra passes over memory).
# Trials stream through copies of every tensor, as calls from a model's layers do.
_OUTS = ("y_ptr", "ro_ptr")
_STREAMED = ("x_ptr", "r_ptr", *_OUTS)
_rows_kernel = tuned(
    _rms_norm_kernel, CONFIGS, key=KEY, interpret_config=INTERPRET_CONFIG, tune_on_copies=_OUTS, heuristics=HEURISTICS,
    rotate=_STREAMED, name="rms_norm_rows",
)
_heads_kernel = tuned(
    _rms_norm_kernel, HEAD_CONFIGS, key=KEY, interpret_config=HEAD_INTERPRET_CONFIG, tune_on_copies=_OUTS,
    heuristics=HEURISTICS, rotate=_STREAMED, name="rms_norm_heads",
)


def _check(t, name: str, shape, dtype, device) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"{name} has dtype {t.dtype}, expected {dtype}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device}")
    if t.numel() and t.stride(-1) != 1:
        raise ValueError(f"{name} must have a contiguous last dimension (stride {t.stride(-1)})")


def _check_common(x, weight, eps, dims: int, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != dims:
        raise ValueError(f"{name} must be a {dims}-D tensor, got {getattr(x, 'shape', type(x).__name__)}")
    if x.dtype not in DTYPES:
        raise ValueError(f"{name} has dtype {x.dtype}; supported: fp16, bf16, fp32")
    _check(x, name, x.shape, x.dtype, x.device)
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise ValueError("weight must be a floating-point tensor")
    _check(weight, "weight", (x.shape[-1],), None, x.device)
    if not 0 < x.shape[-1] <= MAX_COLS:
        raise ValueError(f"normalised size {x.shape[-1]} must be in 1..{MAX_COLS}")
    if not float(eps) >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")


def _launch(kernel, x, r, w, y, ro, n_heads, sx, sr, sy, sro, eps, has_residual, config):
    n_rows = x.shape[0] * n_heads
    if n_rows == 0:
        return
    if config is None and INTERPRET:  # the interpreter's tile, no taller than the problem
        cap = INTERPRET_CONFIG if kernel is _rows_kernel else HEAD_INTERPRET_CONFIG
        config = triton.Config({"ROWS": min(cap.kwargs["ROWS"], next_pow2(n_rows))}, num_warps=cap.num_warps)
    n_cols = x.shape[-1]
    t, mat = x.shape[0], (x.shape[0], n_cols)
    views = [((t, n_heads, n_cols), (*sx, 1)), ((t, n_heads, n_cols), (*sy, 1))]
    if has_residual:
        views += [(mat, (sr, 1)), (mat, (sro, 1))]
    kernel(
        lambda meta: (triton.cdiv(n_rows, meta["ROWS"]),),
        x, r, w, y, ro, n_rows, next_pow2(n_rows),
        N=n_cols, SXT=sx[0], SXH=sx[1], SRT=sr, SYT=sy[0], SYH=sy[1], SROT=sro, EPS=float(eps),
        HAS_RESIDUAL=has_residual, NH=n_heads, BLOCK_N=next_pow2(n_cols),
        OFFS_64=needs_int64(*views), config=config,
    )


def rms_norm(x, weight, eps: float, *, out=None, config=None):
    """y = rnd(rnd(x * rsqrt(mean(x^2) + eps)) * weight) over the rows of x [T, H]; returns y [T, H]."""
    _check_common(x, weight, eps, 2)
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _check(out, "out", x.shape, x.dtype, x.device)
    _launch(_rows_kernel, x, x, weight, out, out, 1, (x.stride(0), 0), 0, (out.stride(0), 0), 0, eps, False, config)
    return out


def add_rms_norm(x, residual, weight, eps: float, *, out=None, residual_out=None, config=None):
    """r' = rnd(x + residual); y = rms_norm(r'). Returns (y, r'). residual_out=residual updates in place."""
    _check_common(x, weight, eps, 2)
    _check(residual, "residual", x.shape, x.dtype, x.device)
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if residual_out is None:
        residual_out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _check(out, "out", x.shape, x.dtype, x.device)
    _check(residual_out, "residual_out", x.shape, x.dtype, x.device)
    if x.numel() and out.data_ptr() == residual_out.data_ptr():
        raise ValueError("out and residual_out must be different tensors")
    _launch(
        _rows_kernel, x, residual, weight, out, residual_out, 1, (x.stride(0), 0), residual.stride(0),
        (out.stride(0), 0), residual_out.stride(0), eps, True, config,
    )
    return out, residual_out


def head_rms_norm(x, weight, eps: float, *, out=None, config=None):
    """Per-head RMSNorm of x [T, heads, D] (any strides, last dim contiguous) with weight [D]; out may be x."""
    _check_common(x, weight, eps, 3)
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _check(out, "out", x.shape, x.dtype, x.device)
    _launch(
        _heads_kernel, x, x, weight, out, out, x.shape[1], (x.stride(0), x.stride(1)), 0,
        (out.stride(0), out.stride(1)), 0, eps, False, config,
    )
    return out


def rms_norm_ref(x, weight, eps: float):
    """fp32 reference with transformers' rounding order: rnd(rnd(x * rsqrt(mean(x^2) + eps)) * w)."""
    xf = x.float()
    n = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return (n.float() * weight.float()).to(x.dtype)


def add_rms_norm_ref(x, residual, weight, eps: float):
    """(rms_norm_ref(r'), r') with r' = rnd(x + residual) in x's dtype."""
    r = (x.float() + residual.float()).to(x.dtype)
    return rms_norm_ref(r, weight, eps), r


def head_rms_norm_ref(x, weight, eps: float):
    """rms_norm_ref over the last dim of x [T, heads, D]."""
    return rms_norm_ref(x, weight, eps)
