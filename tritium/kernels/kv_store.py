"""KV-cache store: write this step's keys and values into the paged caches.

    k_cache[s // B, s % B] = k[t];  v_cache[s // B, s % B] = v[t]     for s = slot_mapping[t] >= 0

The engine's layers store through the RoPE launch instead (rope.py's cache=, the same writes and checks); this
kernel is the standalone store.
k, v: [T, Hkv, D] (any strides with a contiguous last dim, e.g. slices of a packed qkv tensor).
k_cache, v_cache: [num_blocks, B, Hkv, D] (any strides, contiguous last dim), the same dtype as k and v
(fp16, bf16 or fp32). slot_mapping: [T] int32 or int64, distinct slots; -1 skips the token (CUDA-graph
padding), and so does any slot >= num_blocks * B (never written out of bounds). Exact copy. B: any block
size (the engine uses powers of two, 16..256), a compile-time constant of the kernel.
Flat in 1-D, as Inductor's pointwise kernels (and silu_and_mul) are: program p copies elements
i = p * XBLOCK + [0, XBLOCK) of the T x Hkv * D rows, token = i // (Hkv * D), column = i % (Hkv * D). Hkv * D
and every stride are constexprs (one compile per layout, as the engine's layers share one): the divisions
are multiply-shifts and the compiler sees columns contiguous in runs of gcd(XBLOCK, D), so loads and stores
are 16-byte vectors. Each cache address is the pointer plus one term at a time (block, offset, head, column):
summing them into one 64-bit offset first ran 0.03-0.08 us slower at 16-256 tokens (H100). Measured on an
H200 at 16-4096 tokens, this layout ran 0.98-1.02x torch.compile where 2-D (tokens x columns) tiles ran
0.93-0.98x. When T x Hkv x D % XBLOCK == 0 (EVEN heuristic) no load is masked; index math is 32-bit
unless an offset into k or v can pass 2^31 (cache offsets are always 64-bit).
Under Triton's CPU interpreter a launch without config= runs INTERPRET_CONFIG with XBLOCK cut to
next_pow2(T x Hkv x D): few, wide programs, as the interpreter's cost is per program and per op.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritium.autotune import flat_launch, next_pow2, tuned

# Measured on an H200 (bf16, 8 x 128 columns, CUDA graphs, 2026-11-28): XBLOCK 1024 and 512 on 4 warps within
# 1-2% of each other from 16 to 4096 tokens, 512 / 2 best at 256 tokens in one run; 2048 / 8 ran 25-40% slower.
CONFIGS = [
    triton.Config({"XBLOCK": 1024}, num_warps=4),
    triton.Config({"XBLOCK": 512}, num_warps=4),
    triton.Config({"XBLOCK": 512}, num_warps=2),
    triton.Config({"XBLOCK": 256}, num_warps=1),  # more, shorter programs for launch-bound 1-token calls
]
# The interpreter's config (never used on the GPU): 2^17 elements per program, so a 329-token prefill at
# 1024 columns is 3 programs.
INTERPRET_CONFIG = triton.Config({"XBLOCK": 131072}, num_warps=8)
KEY = ["tokens_bucket", "N_COLS", "HEAD_DIM"]
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _head_col(c, S_HEAD: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Offset of column c = head * HEAD_DIM + dim in a row whose heads lie S_HEAD elements apart: c itself
    when they are packed (S_HEAD == HEAD_DIM), as the compiler does not see (c // D) * D + c % D == c."""
    if S_HEAD == HEAD_DIM:
        off = c
    else:
        off = (c // HEAD_DIM) * S_HEAD + c % HEAD_DIM
    return off


@triton.jit
def _store_kv_kernel(
    k_ptr,  # [T, H, D]
    v_ptr,  # [T, H, D]
    kc_ptr,  # [num_blocks, B, H, D]
    vc_ptr,  # [num_blocks, B, H, D]
    slot_ptr,  # [T] int32/int64
    n_elems,  # T * H * D
    tokens_bucket,  # next_pow2(T) (autotune key)
    n_slots,  # num_blocks * B
    N_COLS: tl.constexpr,  # H * D (autotune key)
    SKT: tl.constexpr, SKH: tl.constexpr, SVT: tl.constexpr, SVH: tl.constexpr,  # k, v strides of dims 0, 1
    SKCB: tl.constexpr, SKCS: tl.constexpr, SKCH: tl.constexpr,  # k_cache strides of dims 0, 1, 2
    SVCB: tl.constexpr, SVCS: tl.constexpr, SVCH: tl.constexpr,  # v_cache strides of dims 0, 1, 2
    HEAD_DIM: tl.constexpr,  # D
    BLOCK_SIZE: tl.constexpr,  # B: a constant, so slot // B and slot % B are shifts, not a 64-bit division
    XBLOCK: tl.constexpr,  # elements per program
    EVEN: tl.constexpr,  # n_elems % XBLOCK == 0: no load mask (heuristic)
    OFFS_64: tl.constexpr,  # an offset into k or v may pass 2^31 (launcher check): 64-bit index math
):
    start = tl.program_id(0)
    if OFFS_64:
        start = start.to(tl.int64)
    i = start * XBLOCK + tl.arange(0, XBLOCK)
    t = i // N_COLS
    c = i % N_COLS
    # k, v and the slot load all go out together: a skipped token's row is read, never written; the
    # slot's test masks the stores only.
    k_ptrs = k_ptr + t * SKT + _head_col(c, SKH, HEAD_DIM)
    v_ptrs = v_ptr + t * SVT + _head_col(c, SVH, HEAD_DIM)
    if EVEN:
        slot = tl.load(slot_ptr + t)
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    else:
        ok = i < n_elems
        slot = tl.load(slot_ptr + t, mask=ok, other=-1)
        k = tl.load(k_ptrs, mask=ok)
        v = tl.load(v_ptrs, mask=ok)
    slot = slot.to(tl.int64)
    keep = (slot >= 0) & (slot < n_slots)
    blk = slot // BLOCK_SIZE
    off = slot % BLOCK_SIZE
    tl.store(kc_ptr + blk * SKCB + off * SKCS + _head_col(c, SKCH, HEAD_DIM), k, mask=keep)
    tl.store(vc_ptr + blk * SVCB + off * SVCS + _head_col(c, SVCH, HEAD_DIM), v, mask=keep)


# EVEN depends on the config's XBLOCK: a heuristic, evaluated per launch after the config is chosen.
HEURISTICS = {"EVEN": lambda a: a["n_elems"] % a["XBLOCK"] == 0}
# Re-running a trial config writes the same values, so tuning needs no restore and no copies of the caches
# (gigabytes); trials stream through copies of k, v and the slots.
_kernel = tuned(
    _store_kv_kernel, CONFIGS, key=KEY, name="store_kv", interpret_config=INTERPRET_CONFIG, heuristics=HEURISTICS,
    rotate=("k_ptr", "v_ptr", "slot_ptr"),
)


def check_kv(k, v, k_cache, v_cache, slot_mapping) -> None:
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
    check_kv(k, v, k_cache, v_cache, slot_mapping)
    n, h, d = k.shape
    if n == 0 or h * d == 0 or k_cache.shape[0] * k_cache.shape[1] == 0:
        return
    n_elems = n * h * d
    config, offs_64 = flat_launch(n_elems, config, INTERPRET_CONFIG, ((n, h, d), k.stride()), ((n, h, d), v.stride()))
    _kernel(
        lambda meta: (triton.cdiv(n_elems, meta["XBLOCK"]),),
        k, v, k_cache, v_cache, slot_mapping, n_elems, next_pow2(n), k_cache.shape[0] * k_cache.shape[1],
        N_COLS=h * d, SKT=k.stride(0), SKH=k.stride(1), SVT=v.stride(0), SVH=v.stride(1),
        SKCB=k_cache.stride(0), SKCS=k_cache.stride(1), SKCH=k_cache.stride(2),
        SVCB=v_cache.stride(0), SVCS=v_cache.stride(1), SVCH=v_cache.stride(2),
        HEAD_DIM=d, BLOCK_SIZE=k_cache.shape[1], OFFS_64=offs_64, config=config,
    )


def store_kv_ref(k, v, k_cache, v_cache, slot_mapping) -> None:
    """Plain PyTorch, in place: the same writes (slots < 0 or past the cache skipped). Syncs the host."""
    b = k_cache.shape[1]
    s = slot_mapping.long()
    keep = (s >= 0) & (s < k_cache.shape[0] * b)
    s = s[keep]
    k_cache[s // b, s % b] = k[keep]
    v_cache[s // b, s % b] = v[keep]
