"""Rotary position embedding (rotate-half / neox style, as transformers' Qwen3, Qwen2 and Llama), optionally
fused with Qwen3's per-head q_norm / k_norm.

Cache layout: rope_cos_sin(D, P, theta) -> cs [P, D] fp32 with cs[p, :D/2] = cos(p * f) and
cs[p, D/2:] = sin(p * f), f_i = theta^(-2i/D), computed exactly as transformers' Qwen3RotaryEmbedding
(fp32 inv_freq, fp32 product position * inv_freq). transformers' cos/sin of width D repeat each half, so
the D/2 values here are all there is.

apply_rope(q [T, Hq, D], k [T, Hkv, D], positions [T], cs): in place, for each head vector x = [x1, x2]
(halves of D/2), c = cs[pos, :D/2], s = cs[pos, D/2:]:
    x1' = x1 * c - x2 * s        x2' = x2 * c + x1 * s           (fp32, one rounding to x's dtype)
qk_norm_rope(q, k, q_weight [D], k_weight [D], eps, positions, cs): in place, x <- rope(head_rms_norm(x, w))
in one pass; the normalised value is rounded to x's dtype before the rotation, as transformers' q_norm
output is (see rmsnorm.py for the norm's rounding order).
Both take `cache=(v, k_cache, v_cache, slots)`: the same launch also stores the rotated k and v [T, Hkv, D] in
the paged caches at slots [T], as kv_store.store_kv does (-1 skips); one launch and one read of k fewer.
q and k: fp16, bf16 or fp32 (the same), any strides with a contiguous last dim (slices of a packed qkv
tensor). positions: int32/int64 in [0, P) (values outside are clamped, never read out of bounds).
One program handles BLOCK_T tokens and all of their q and k heads, so each cos/sin row is read once.
Under Triton's CPU interpreter a launch without config= runs INTERPRET_CONFIG with BLOCK_T cut to
next_pow2(T): many tokens per program, as the interpreter's cost is per program and per op, not per byte.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritium.autotune import next_pow2, pdl_launch, pdl_wait, tuned
from tritium.kernels.kv_store import check_kv
from tritium.platform import INTERPRET

CONFIGS = [
    triton.Config({"BLOCK_T": 1}, num_warps=4),
    triton.Config({"BLOCK_T": 1}, num_warps=2),
    triton.Config({"BLOCK_T": 1}, num_warps=8),
    triton.Config({"BLOCK_T": 2}, num_warps=4),
    triton.Config({"BLOCK_T": 2}, num_warps=8),
    triton.Config({"BLOCK_T": 4}, num_warps=8),
]
# The interpreter's config (never used on the GPU): it spends ~15-20 ms per program of this kernel whatever
# the tile, so up to 128 tokens x all heads per program make a 329-token prefill 3 programs instead of 329.
INTERPRET_CONFIG = triton.Config({"BLOCK_T": 128}, num_warps=8)
KEY = ["tokens_bucket", "n_q_heads", "n_kv_heads", "HALF", "NORM", "STORE"]
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _heads_ptr(
    ptr,  # [T, H, D] q or k; last dim contiguous
    t,  # [BLOCK_T] token indices of this program
    n_tokens, n_heads, stride_t, stride_h,
    HALF: tl.constexpr, HALF_P2: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """Pointers to the first halves of this program's head vectors [BLOCK_T, BLOCK_H, HALF_P2], and their mask."""
    h = tl.arange(0, BLOCK_H)
    d = tl.arange(0, HALF_P2)
    mask = (t < n_tokens)[:, None, None] & (h < n_heads)[None, :, None] & (d < HALF)[None, None, :]
    return ptr + t.to(tl.int64)[:, None, None] * stride_t + (h * stride_h)[None, :, None] + d[None, None, :], mask


@triton.jit
def _halves(w_ptr, d, HALF: tl.constexpr):
    """The two halves of a [2 * HALF] norm weight as fp32 [1, 1, HALF_P2] (d: arange(HALF_P2))."""
    w1 = tl.load(w_ptr + d, mask=d < HALF, other=0.0).to(tl.float32)[None, None, :]
    w2 = tl.load(w_ptr + HALF + d, mask=d < HALF, other=0.0).to(tl.float32)[None, None, :]
    return w1, w2


@triton.jit
def _norm_rope_store(
    p, mask,  # from _heads_ptr
    x1, x2,  # [BLOCK_T, BLOCK_H, HALF_P2] the loaded halves, in x's dtype
    w1, w2,  # [1, 1, HALF_P2] fp32 norm weight halves (used when NORM)
    cos, sin,  # [BLOCK_T, 1, HALF_P2] fp32
    eps,
    NORM: tl.constexpr, HALF: tl.constexpr,
):
    dt = p.dtype.element_ty
    x1 = x1.to(tl.float32)
    x2 = x2.to(tl.float32)
    if NORM:
        inv = tl.rsqrt((tl.sum(x1 * x1, axis=2) + tl.sum(x2 * x2, axis=2)) / (2 * HALF) + eps)[:, :, None]
        # transformers' rounding: rnd(rnd(x * inv) * w), then RoPE on that stored value.
        x1 = ((x1 * inv).to(dt).to(tl.float32) * w1).to(dt).to(tl.float32)
        x2 = ((x2 * inv).to(dt).to(tl.float32) * w2).to(dt).to(tl.float32)
    y1 = (x1 * cos - x2 * sin).to(dt)
    y2 = (x2 * cos + x1 * sin).to(dt)
    tl.store(p, y1, mask=mask)
    tl.store(p + HALF, y2, mask=mask)
    return y1, y2


@triton.jit
def _cache_ptr(
    c_ptr,  # [num_blocks, B, H, D]
    slot,  # [BLOCK_T] int64 cache slots
    n_heads, stride_b, stride_s, stride_h,
    BLOCK_SIZE: tl.constexpr, HALF_P2: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """Pointers to the first halves of the head vectors at `slot` in a paged cache [BLOCK_T, BLOCK_H, HALF_P2]."""
    h = tl.arange(0, BLOCK_H)
    d = tl.arange(0, HALF_P2)
    row = c_ptr + (slot // BLOCK_SIZE) * stride_b + (slot % BLOCK_SIZE) * stride_s
    return row[:, None, None] + (h * stride_h)[None, :, None] + d[None, None, :]


# variants must not depend on step sizes (autotune.SPECIALIZATION)
@triton.jit(do_not_specialize=["n_tokens"], do_not_specialize_on_alignment=["pos_ptr", "slot_ptr"])
def _rope_kernel(
    q_ptr,  # [T, Hq, D]
    k_ptr,  # [T, Hkv, D]
    qw_ptr,  # [D] q_norm weight (NORM only)
    kw_ptr,  # [D] k_norm weight (NORM only)
    pos_ptr,  # [T] int32/int64 positions
    cs_ptr,  # [P, D] fp32 cos | sin
    v_ptr,  # [T, Hkv, D] (STORE only)
    kc_ptr,  # [num_blocks, B, Hkv, D] k cache (STORE only)
    vc_ptr,  # [num_blocks, B, Hkv, D] v cache (STORE only)
    slot_ptr,  # [T] int32/int64 cache slots, -1 skips (STORE only)
    n_slots,  # num_blocks * B
    stride_vt, stride_vh,
    stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch,  # cache strides of dims 0-2
    n_tokens,  # T
    tokens_bucket,  # next_pow2(T) (autotune key)
    n_q_heads, n_kv_heads,  # Hq, Hkv
    max_pos,  # P
    stride_qt, stride_qh, stride_kt, stride_kh,
    stride_cs,  # cs row stride
    eps,
    NORM: tl.constexpr,
    STORE: tl.constexpr,  # also write k and v into the caches
    BLOCK_SIZE: tl.constexpr,  # B, the cache's tokens per block (STORE only)
    HALF: tl.constexpr,  # D / 2
    HALF_P2: tl.constexpr,  # next_pow2(D / 2)
    BLOCK_HQ: tl.constexpr,  # next_pow2(Hq)
    BLOCK_HK: tl.constexpr,  # next_pow2(Hkv)
    BLOCK_T: tl.constexpr,  # tokens per program
    PDL: tl.constexpr,  # programmatic dependent launch: wait for the kernel before (autotune.pdl_launch)
):
    pdl_wait(PDL)
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = t < n_tokens
    d = tl.arange(0, HALF_P2)
    # Every load that does not depend on the position goes out before the cos/sin loads, which wait for
    # it: one memory round trip for the q/k data instead of a position round trip and then another.
    pos = tl.load(pos_ptr + t, mask=t_ok, other=0)
    pq, mq = _heads_ptr(q_ptr, t, n_tokens, n_q_heads, stride_qt, stride_qh, HALF, HALF_P2, BLOCK_HQ)
    pk, mk = _heads_ptr(k_ptr, t, n_tokens, n_kv_heads, stride_kt, stride_kh, HALF, HALF_P2, BLOCK_HK)
    q1 = tl.load(pq, mask=mq, other=0.0)
    q2 = tl.load(pq + HALF, mask=mq, other=0.0)
    k1 = tl.load(pk, mask=mk, other=0.0)
    k2 = tl.load(pk + HALF, mask=mk, other=0.0)
    qw1 = 0.0  # the norm weights, fp32 [1, 1, HALF_P2] halves (NORM only)
    qw2 = 0.0
    kw1 = 0.0
    kw2 = 0.0
    if NORM:
        qw1, qw2 = _halves(qw_ptr, d, HALF)
        kw1, kw2 = _halves(kw_ptr, d, HALF)
    pos = tl.minimum(tl.maximum(pos.to(tl.int64), 0), max_pos - 1)
    cmask = t_ok[:, None] & (d < HALF)[None, :]
    c = cs_ptr + pos[:, None] * stride_cs + d[None, :]
    cos = tl.load(c, mask=cmask, other=0.0)[:, None, :]
    sin = tl.load(c + HALF, mask=cmask, other=0.0)[:, None, :]
    _norm_rope_store(pq, mq, q1, q2, qw1, qw2, cos, sin, eps, NORM, HALF)
    k1, k2 = _norm_rope_store(pk, mk, k1, k2, kw1, kw2, cos, sin, eps, NORM, HALF)
    if STORE:
        pv, _ = _heads_ptr(v_ptr, t, n_tokens, n_kv_heads, stride_vt, stride_vh, HALF, HALF_P2, BLOCK_HK)
        v1 = tl.load(pv, mask=mk, other=0.0)
        v2 = tl.load(pv + HALF, mask=mk, other=0.0)
        slot = tl.load(slot_ptr + t, mask=t_ok, other=-1).to(tl.int64)
        keep = mk & ((slot >= 0) & (slot < n_slots))[:, None, None]
        slot = tl.where(slot >= 0, slot, 0)  # skipped tokens' (masked) addresses stay in range
        pkc = _cache_ptr(kc_ptr, slot, n_kv_heads, stride_kcb, stride_kcs, stride_kch, BLOCK_SIZE, HALF_P2, BLOCK_HK)
        pvc = _cache_ptr(vc_ptr, slot, n_kv_heads, stride_vcb, stride_vcs, stride_vch, BLOCK_SIZE, HALF_P2, BLOCK_HK)
        tl.store(pkc, k1, mask=keep)
        tl.store(pkc + HALF, k2, mask=keep)
        tl.store(pvc, v1, mask=keep)
        tl.store(pvc + HALF, v2, mask=keep)


# q and k are rotated in place: the tuner's trials run on copies of them (restore_value's copy-back would be
# timed with every trial); a trial's cache store rewrites the same values.
_kernel = tuned(_rope_kernel, CONFIGS, key=KEY, interpret_config=INTERPRET_CONFIG, tune_on_copies=("q_ptr", "k_ptr"),
               name="rope")


def rope_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """fp32 [head_dim / 2]: theta^(-2i/head_dim), as transformers computes the default RoPE frequencies."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))


def rope_cos_sin(head_dim: int, max_position: int, theta: float, device=None, inv_freq=None) -> torch.Tensor:
    """[max_position, head_dim] fp32: cos(p * f) in the first half, sin(p * f) in the second; f = inv_freq
    [head_dim / 2] if given (a model's rescaled frequencies), else theta^(-2i/head_dim)."""
    if head_dim <= 0 or head_dim % 2 or max_position <= 0:
        raise ValueError(f"need an even head_dim > 0 and max_position > 0, got {head_dim}, {max_position}")
    if inv_freq is None:
        inv_freq = rope_inv_freq(head_dim, theta)
    elif tuple(inv_freq.shape) != (head_dim // 2,):
        raise ValueError(f"inv_freq must have shape [{head_dim // 2}], got {tuple(inv_freq.shape)}")
    inv_freq = inv_freq.float()
    pos = torch.arange(max_position, dtype=torch.float, device=device)
    freqs = pos[:, None] * inv_freq.to(device)[None, :]
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).contiguous()


def _check_qk(q, k, positions, cos_sin) -> None:
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise ValueError(f"{name} must be a 3-D tensor [T, heads, head_dim]")
        if t.dtype not in DTYPES:
            raise ValueError(f"{name} has dtype {t.dtype}; supported: fp16, bf16, fp32")
        if t.numel() and t.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dimension (stride {t.stride(-1)})")
    if k.dtype != q.dtype or k.device != q.device:
        raise ValueError(f"k ({k.dtype}, {k.device}) must match q ({q.dtype}, {q.device})")
    if k.shape[0] != q.shape[0] or k.shape[2] != q.shape[2]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree on tokens and head_dim")
    d = q.shape[2]
    if d % 2 or d == 0:
        raise ValueError(f"head_dim must be even, got {d}")
    if not isinstance(positions, torch.Tensor) or positions.dtype not in (torch.int32, torch.int64):
        raise ValueError("positions must be an int32 or int64 tensor")
    if tuple(positions.shape) != (q.shape[0],) or positions.device != q.device or positions.stride(0) != 1:
        raise ValueError(f"positions must be contiguous [{q.shape[0]}] on {q.device}, got {tuple(positions.shape)}")
    if not isinstance(cos_sin, torch.Tensor) or cos_sin.dtype != torch.float32 or cos_sin.dim() != 2:
        raise ValueError("cos_sin must be a 2-D fp32 tensor from rope_cos_sin")
    if cos_sin.shape[1] != d or cos_sin.shape[0] == 0 or cos_sin.stride(1) != 1 or cos_sin.device != q.device:
        raise ValueError(f"cos_sin {tuple(cos_sin.shape)} must be [P, {d}], last dim contiguous, on {q.device}")


def _launch(q, k, qw, kw, eps, positions, cos_sin, norm, config, cache):
    n = q.shape[0]
    if cache is not None:
        if not isinstance(cache, (tuple, list)) or len(cache) != 4:
            raise ValueError("cache must be (v, k_cache, v_cache, slots)")
        check_kv(k, *cache)
    if n == 0:
        return
    if cache is None:  # the cache arguments go unread; fixed values, so they add no variant
        v, kc, vc, slots, n_slots, block = k, k, k, positions, 0, 1
        vs, kcs, vcs = (0, 0), (0, 0, 0), (0, 0, 0)
    else:
        v, kc, vc, slots = cache
        n_slots, block = kc.shape[0] * kc.shape[1], kc.shape[1]
        vs, kcs, vcs = v.stride()[:2], kc.stride()[:3], vc.stride()[:3]
    d = q.shape[2]
    if config is None and INTERPRET:  # the interpreter's tile, no taller than the problem
        bt = min(INTERPRET_CONFIG.kwargs["BLOCK_T"], next_pow2(n))
        config = triton.Config({"BLOCK_T": bt}, num_warps=INTERPRET_CONFIG.num_warps)
    _kernel(
        lambda meta: (triton.cdiv(n, meta["BLOCK_T"]),),
        q, k, qw, kw, positions, cos_sin, v, kc, vc, slots, n_slots, *vs, *kcs, *vcs,
        n, next_pow2(n), q.shape[1], k.shape[1], cos_sin.shape[0],
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos_sin.stride(0), float(eps),
        NORM=norm, STORE=cache is not None, BLOCK_SIZE=block, HALF=d // 2, HALF_P2=next_pow2(d // 2),
        BLOCK_HQ=next_pow2(q.shape[1]), BLOCK_HK=next_pow2(k.shape[1]), config=config, **pdl_launch(),
    )


def apply_rope(q, k, positions, cos_sin, *, cache=None, config=None) -> None:
    """Rotate q [T, Hq, D] and k [T, Hkv, D] in place at positions [T] with a rope_cos_sin cache; with
    cache=(v, k_cache, v_cache, slots) also store k and v at slots (see the module doc)."""
    _check_qk(q, k, positions, cos_sin)
    _launch(q, k, q, k, 0.0, positions, cos_sin, False, config, cache)


def qk_norm_rope(q, k, q_weight, k_weight, eps: float, positions, cos_sin, *, cache=None, config=None) -> None:
    """In place: q <- rope(head_rms_norm(q, q_weight)), k <- rope(head_rms_norm(k, k_weight)); with
    cache=(v, k_cache, v_cache, slots) also store the new k and v at slots."""
    _check_qk(q, k, positions, cos_sin)
    for name, w in (("q_weight", q_weight), ("k_weight", k_weight)):
        if not isinstance(w, torch.Tensor) or not w.is_floating_point() or tuple(w.shape) != (q.shape[2],):
            raise ValueError(f"{name} must be a float tensor of shape [{q.shape[2]}]")
        if w.stride(0) != 1 or w.device != q.device:
            raise ValueError(f"{name} must be contiguous and on {q.device}")
    if not float(eps) >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    _launch(q, k, q_weight, k_weight, eps, positions, cos_sin, True, config, cache)


def _rotate_ref(x, cs):
    half = x.shape[-1] // 2
    cos, sin = cs[:, None, :half], cs[:, None, half:]
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def apply_rope_ref(q, k, positions, cos_sin):
    """fp32 reference: returns new (q', k') in q's dtype; q and k are left unchanged."""
    cs = cos_sin[positions.long()].float()
    return _rotate_ref(q, cs), _rotate_ref(k, cs)


def qk_norm_rope_ref(q, k, q_weight, k_weight, eps: float, positions, cos_sin):
    """apply_rope_ref of the per-head RMSNorm'd q and k (head_rms_norm_ref, rounded to q's dtype)."""
    from tritium.kernels.rmsnorm import head_rms_norm_ref

    return apply_rope_ref(head_rms_norm_ref(q, q_weight, eps), head_rms_norm_ref(k, k_weight, eps), positions, cos_sin)
