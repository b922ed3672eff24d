"""KV-cache store: write this step's keys and values into the paged caches.

    k_cache[s // B, s % B] = k[t];  v_cache[s // B, s % B] = v[t]     for s = slot_mapping[t] >= 0

k, v: [T, Hkv, D] (any strides with a contiguous last dim, e.g. slices of a packed qkv tensor).
k_cache, v_cache: [num_blocks, B, Hkv, D] (any strides, contiguous last dim), the same dtype as k and v
(fp16, bf16 or fp32). slot_mapping: [T] int32 or int64, distinct slots; -1 skips the token (CUDA-graph
padding), and so does any slot >= num_blocks * B (never written out of bounds). Exact copy. B: any block
size (the engine uses powers of two, 16..256), a compile-time constant of the kernel.
Tiled in 2-D over (tokens, Hkv * D columns): each program copies BLOCK_T rows of BLOCK_C elements.
Hkv * D and every stride are constexprs (one compile per layout, as the engine's layers share one): no
stride arguments to load before the first address, and multiplies by constants.
Under Triton's CPU interpreter a launch without config= runs INTERPRET_CONFIG with its blocks cut to
next_pow2 of T and Hkv * D: many tokens per program, as the interpreter's cost is per program and per op.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritium.autotune import next_pow2, tuned
from tritium.platform import INTERPRET

CONFIGS = [
    triton.Config({"BLOCK_T": 1, "BLOCK_C": 1024}, num_warps=4),
    triton.Config({"BLOCK_T": 2, "BLOCK_C": 1024}, num_warps=4),
    triton.Config({"BLOCK_T": 4, "BLOCK_C": 1024}, num_warps=8),
    triton.Config({"BLOCK_T": 1, "BLOCK_C": 512}, num_warps=2),
    # Launch-bound 1-64 token calls: more, shorter programs (16 B per thread per tensor).
    triton.Config({"BLOCK_T": 1, "BLOCK_C": 256}, num_warps=1),
    triton.Config({"BLOCK_T": 8, "BLOCK_C": 512}, num_warps=8),
]
# The interpreter's config (never used on the GPU): up to 128 tokens x 1024 columns (Qwen3's Hkv * D) per
# program, so a 329-token prefill is 3 programs instead of 329.
INTERPRET_CONFIG = triton.Config({"BLOCK_T": 128, "BLOCK_C": 1024}, num_warps=8)
KEY = ["tokens_bucket", "N_COLS", "HEAD_DIM"]
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _store_kv_kernel(
    k_ptr,  # [T, H, D]
    v_ptr,  # [T, H, D]
    kc_ptr,  # [num_blocks, B, H, D]
    vc_ptr,  # [num_blocks, B, H, D]
    slot_ptr,  # [T] int32/int64
    n_tokens,  # T
    tokens_bucket,  # next_pow2(T) (autotune key)
    n_slots,  # num_blocks * B
    N_COLS: tl.constexpr,  # H * D (autotune key)
    SKT: tl.constexpr, SKH: tl.constexpr, SVT: tl.constexpr, SVH: tl.constexpr,  # k, v strides of dims 0, 1
    SKCB: tl.constexpr, SKCS: tl.constexpr, SKCH: tl.constexpr,  # k_cache strides of dims 0, 1, 2
    SVCB: tl.constexpr, SVCS: tl.constexpr, SVCH: tl.constexpr,  # v_cache strides of dims 0, 1, 2
    HEAD_DIM: tl.constexpr,  # D
    BLOCK_SIZE: tl.constexpr,  # B: a constant, so slot // B and slot % B are shifts, not a 64-bit division
    BLOCK_T: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    t_ok = t < n_tokens
    c_ok = (c < N_COLS)[None, :]
    h = (c // HEAD_DIM)[None, :]
    d = (c % HEAD_DIM)[None, :]
    t64 = t.to(tl.int64)[:, None]
    # k, v and the slot load all go out together: k / v are masked on the token bound only (a skipped
    # token's row is read, never written), so they do not wait for the slot to arrive; its test masks
    # the stores.
    slot = tl.load(slot_ptr + t, mask=t_ok, other=-1).to(tl.int64)
    in_mask = t_ok[:, None] & c_ok
    k = tl.load(k_ptr + t64 * SKT + h * SKH + d, mask=in_mask)
    v = tl.load(v_ptr + t64 * SVT + h * SVH + d, mask=in_mask)
    mask = ((slot >= 0) & (slot < n_slots))[:, None] & c_ok
    blk = (slot // BLOCK_SIZE)[:, None]
    off = (slot % BLOCK_SIZE)[:, None]
    tl.store(kc_ptr + blk * SKCB + off * SKCS + h * SKCH + d, k, mask=mask)
    tl.store(vc_ptr + blk * SVCB + off * SVCS + h * SVCH + d, v, mask=mask)


# Re-running a trial config writes the same values, so tuning needs no restore and no copies of the caches
# (gigabytes); trials stream through copies of k, v and the slots.
_kernel = tuned(
    _store_kv_kernel, CONFIGS, key=KEY, interpret_config=INTERPRET_CONFIG, rotate=("k_ptr", "v_ptr", "slot_ptr")
)


def _check_kv(k, v, k_cache, v_cache, slot_mapping) -> None:
    for name, t, dims in (("k", k, 3), ("v", v, 3), ("k_cache", k_cache, 4), ("v_cache", v_cache, 4)):
        if not isinstance(t, torch.Tensor) or t.dim() != dims:
            raise ValueError(f"{name} must be a {dims}-D tensor, got {getattr(t, 'shape', type(t).__name__)}")
        if t.dtype not in DTYPES or t.dtype != k.dtype:
            raise ValueError(f"{name} has dtype {t.dtype}; k, v and the caches must share one of fp16/bf16/fp32")
        if t.device != k.device:
            raise ValueError(f"{name} is on {t.device}, k on {k.device}")
        if t.numel() and t.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dimension (stride {t.stride(-1)})")
    if v.shape != k.shape:
        raise ValueError(f"v {tuple(v.shape)} must match k {tuple(k.shape)}")
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache {tuple(v_cache.shape)} must match k_cache {tuple(k_cache.shape)}")
    if k_cache.shape[2:] != k.shape[1:]:
        raise ValueError(f"cache heads/head_dim {tuple(k_cache.shape[2:])} != k's {tuple(k.shape[1:])}")
    if not isinstance(slot_mapping, torch.Tensor) or slot_mapping.dtype not in (torch.int32, torch.int64):
        raise ValueError("slot_mapping must be an int32 or int64 tensor")
    if tuple(slot_mapping.shape) != (k.shape[0],) or slot_mapping.device != k.device:
        raise ValueError(f"slot_mapping must be [{k.shape[0]}] on {k.device}, got {tuple(slot_mapping.shape)}")
    if slot_mapping.numel() and slot_mapping.stride(0) != 1:
        raise ValueError("slot_mapping must be contiguous")


def store_kv(k, v, k_cache, v_cache, slot_mapping, *, config=None) -> None:
    """Copy k, v [T, Hkv, D] into k_cache, v_cache [num_blocks, B, Hkv, D] at slot_mapping (-1 skips)."""
    _check_kv(k, v, k_cache, v_cache, slot_mapping)
    n, h, d = k.shape
    if n == 0 or h * d == 0 or k_cache.shape[0] * k_cache.shape[1] == 0:
        return
    if config is None and INTERPRET:  # the interpreter's tile, no larger than the problem
        cap = INTERPRET_CONFIG.kwargs
        config = triton.Config(
            {"BLOCK_T": min(cap["BLOCK_T"], next_pow2(n)), "BLOCK_C": min(cap["BLOCK_C"], next_pow2(h * d))},
            num_warps=INTERPRET_CONFIG.num_warps,
        )
    _kernel(
        lambda meta: (triton.cdiv(n, meta["BLOCK_T"]), triton.cdiv(h * d, meta["BLOCK_C"])),
        k, v, k_cache, v_cache, slot_mapping, n, next_pow2(n), k_cache.shape[0] * k_cache.shape[1], N_COLS=h * d,
        SKT=k.stride(0), SKH=k.stride(1), SVT=v.stride(0), SVH=v.stride(1),
        SKCB=k_cache.stride(0), SKCS=k_cache.stride(1), SKCH=k_cache.stride(2),
        SVCB=v_cache.stride(0), SVCS=v_cache.stride(1), SVCH=v_cache.stride(2),
        HEAD_DIM=d, BLOCK_SIZE=k_cache.shape[1], config=config,
    )


def store_kv_ref(k, v, k_cache, v_cache, slot_mapping) -> None:
    """Plain PyTorch, in place: the same writes (slots < 0 or past the cache skipped). Syncs the host."""
    b = k_cache.shape[1]
    s = slot_mapping.long()
    keep = (s >= 0) & (s < k_cache.shape[0] * b)
    s = s[keep]
    k_cache[s // b, s % b] = k[keep]
    v_cache[s // b, s % b] = v[keep]
