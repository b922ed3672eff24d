"""References and input checks shared by the paged attention kernels (prefill_attention, decode_attention).

Paged KV cache: `k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim]`. Sequence b owns the
physical blocks `block_tables[b, 0 .. cdiv(seq_lens[b], block_size) - 1]`; its token at position p lives in
block `block_tables[b, p // block_size]`, slot `p % block_size`. Entries past its last block are padding
and are never read.

Attention (per query head h, GQA: kv head h // (Hq / Hkv)), for a query at absolute position p:
    out = softmax(scale * q . K[0..p]^T) @ V[0..p]
The references gather each sequence's keys/values out of the cache and compute in fp32 with plain PyTorch;
they return fp32 (or write into `out`, cast to its dtype). They sync with the host freely: tests only.
"""
from __future__ import annotations

import torch

DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def gather_kv(cache: torch.Tensor, table_row: torch.Tensor, n: int) -> torch.Tensor:
    """The first n tokens of one sequence (block table row `table_row`) out of the paged cache:
    [n, Hkv, D] in fp32."""
    bs = cache.shape[1]
    nblk = -(-n // bs)
    blocks = cache[table_row[:nblk].long()]  # [nblk, bs, Hkv, D]
    return blocks.reshape(nblk * bs, *cache.shape[2:])[:n].float()


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, scale: float):
    """q [Lq, Hq, D], k/v [Lk, Hkv, D] (fp32); query i sees keys 0..q_pos[i]. Returns [Lq, Hq, D]."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    s = torch.einsum("qhd,khd->hqk", q.float(), k) * scale
    visible = torch.arange(k.shape[0])[None, :] <= q_pos[:, None].cpu()
    s = s.masked_fill(~visible.to(s.device), float("-inf"))
    return torch.einsum("hqk,khd->qhd", torch.softmax(s, dim=-1), v)


def _finish(res: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    if out is None:
        return res
    out.copy_(res.to(out.dtype))
    return out


def prefill_attention_ref(q, k_cache, v_cache, cu_seqlens_q, seq_lens, block_tables, max_seqlen_q, scale, *, out=None):
    """Paged causal attention of packed variable-length queries (see prefill_attention), in fp32."""
    res = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    cu = cu_seqlens_q.tolist()
    for b, n in enumerate(seq_lens.tolist()):
        lo, hi = cu[b], cu[b + 1]
        if hi == lo:
            continue
        k = gather_kv(k_cache, block_tables[b], n)
        v = gather_kv(v_cache, block_tables[b], n)
        q_pos = torch.arange(n - (hi - lo), n)
        res[lo:hi] = _attend(q[lo:hi], k, v, q_pos, scale)
    return _finish(res, out)


def decode_attention_ref(q, k_cache, v_cache, seq_lens, block_tables, scale, *, out=None):
    """Paged attention of one query per sequence over its whole context (see decode_attention), in fp32.
    Rows with seq_len 0 are zero."""
    res = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    for b, n in enumerate(seq_lens.tolist()):
        if n == 0:
            continue
        k = gather_kv(k_cache, block_tables[b], n)
        v = gather_kv(v_cache, block_tables[b], n)
        res[b : b + 1] = _attend(q[b : b + 1], k, v, torch.tensor([n - 1]), scale)
    return _finish(res, out)


# ---- input checks shared by the launchers (raise ValueError with a clear message) ----


def _fail(msg: str):
    raise ValueError(msg)


def check_q_cache(name: str, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> tuple:
    """Checks q [N, Hq, D] against the paged caches; returns (Hq, Hkv, D, block_size)."""
    if q.dim() != 3:
        _fail(f"{name}: q must be [tokens, q_heads, head_dim], got shape {tuple(q.shape)}")
    if q.dtype not in DTYPES:
        _fail(f"{name}: q dtype {q.dtype} not supported (fp16, bf16, fp32)")
    if q.stride(-1) != 1:
        _fail(f"{name}: q's last dim must be contiguous (stride 1), got strides {q.stride()}")
    for t, tn in ((k_cache, "k_cache"), (v_cache, "v_cache")):
        if t.dim() != 4:
            _fail(f"{name}: {tn} must be [num_blocks, block_size, kv_heads, head_dim], got {tuple(t.shape)}")
        if t.dtype != q.dtype:
            _fail(f"{name}: {tn} dtype {t.dtype} != q dtype {q.dtype}")
        if t.device != q.device:
            _fail(f"{name}: {tn} on {t.device}, q on {q.device}")
        if t.stride(-1) != 1:
            _fail(f"{name}: {tn}'s last dim must be contiguous, got strides {t.stride()}")
    if k_cache.shape != v_cache.shape or k_cache.stride() != v_cache.stride():
        _fail(f"{name}: k_cache {tuple(k_cache.shape)}/{k_cache.stride()} and v_cache "
              f"{tuple(v_cache.shape)}/{v_cache.stride()} must match in shape and strides")
    _, bs, hkv, d = k_cache.shape
    hq = q.shape[1]
    if q.shape[2] != d:
        _fail(f"{name}: q head_dim {q.shape[2]} != cache head_dim {d}")
    if d < 16 or d > 256 or d & (d - 1):
        _fail(f"{name}: head_dim must be a power of two in 16..256, got {d}")
    if bs < 1 or bs & (bs - 1):
        _fail(f"{name}: block_size must be a power of two, got {bs}")
    if hkv < 1 or hq % hkv:
        _fail(f"{name}: q heads {hq} must be a multiple of kv heads {hkv}")
    return hq, hkv, d, bs


def check_int_vector(name: str, arg: str, t: torch.Tensor, n: int, device) -> None:
    if t.dtype != torch.int32 or t.dim() != 1 or t.shape[0] != n:
        _fail(f"{name}: {arg} must be int32 [{n}], got {t.dtype} {tuple(t.shape)}")
    if t.device != device:
        _fail(f"{name}: {arg} on {t.device}, q on {device}")
    if t.stride(0) != 1:
        _fail(f"{name}: {arg} must be contiguous")


def check_block_tables(name: str, bt: torch.Tensor, batch: int, device) -> None:
    if bt.dtype != torch.int32 or bt.dim() != 2 or bt.shape[0] != batch:
        _fail(f"{name}: block_tables must be int32 [{batch}, max_blocks], got {bt.dtype} {tuple(bt.shape)}")
    if bt.device != device:
        _fail(f"{name}: block_tables on {bt.device}, q on {device}")
    if bt.stride(1) != 1:
        _fail(f"{name}: block_tables rows must be contiguous, got strides {bt.stride()}")


def check_out(name: str, out: torch.Tensor | None, q: torch.Tensor) -> torch.Tensor:
    """Returns out (checked) or a new tensor shaped like q."""
    if out is None:
        return torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
        _fail(f"{name}: out must be {q.dtype} {tuple(q.shape)} on {q.device}, got "
              f"{out.dtype} {tuple(out.shape)} on {out.device}")
    if out.stride(-1) != 1:
        _fail(f"{name}: out's last dim must be contiguous, got strides {out.stride()}")
    return out


def random_paged_kv(seq_lens, num_kv_heads: int, head_dim: int, block_size: int, *, dtype=torch.float32,
                    device="cpu", extra_blocks: int = 0, max_blocks: int | None = None, poison: bool = True,
                    generator: torch.Generator | None = None):
    """A paged cache holding random K/V for sequences of lengths `seq_lens` (a list of ints), their blocks
    scattered over shuffled physical slots (plus `extra_blocks` unowned ones). Returns (k_cache, v_cache,
    block_tables int32 [B, max_blocks], padding -1). With `poison`, every slot no sequence owns holds NaN,
    so a kernel that reads past a sequence's end shows it. For tests and benchmarks."""
    need = [-(-n // block_size) for n in seq_lens]
    max_blocks = max(max_blocks or 0, max(need, default=0), 1)
    num_blocks = sum(need) + extra_blocks + 1
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=generator, device=device).to(dtype)
    v_cache = torch.randn(shape, generator=generator, device=device).to(dtype)
    perm = torch.randperm(num_blocks, generator=generator, device=device).to(torch.int32)
    tables = torch.full((len(seq_lens), max_blocks), -1, dtype=torch.int32, device=device)
    owned = torch.zeros(num_blocks * block_size, dtype=torch.bool, device=device)
    i = 0
    for b, (n, nb) in enumerate(zip(seq_lens, need)):
        tables[b, :nb] = perm[i : i + nb]
        slots = (perm[i : i + nb].long()[:, None] * block_size + torch.arange(block_size, device=device)).flatten()
        owned[slots[:n]] = True
        i += nb
    if poison:
        bad = ~owned.view(num_blocks, block_size)
        k_cache[bad] = float("nan")
        v_cache[bad] = float("nan")
    return k_cache, v_cache, tables
