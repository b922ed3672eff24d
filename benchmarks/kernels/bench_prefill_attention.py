"""Paged causal prefill attention at Qwen3-0.6B (16 q / 8 kv heads) and 8B (32 / 8) layouts, head_dim 128,
bf16: 1 x {1k, 4k, 16k} and 16 x 1k tokens, fresh (no prefix) and with the first half of each sequence
already cached (the second half's queries attend to it fully and to themselves causally).

FLOPs: 4 * D * Hq per visible (query, key) pair, pairs = q_len * prefix + q_len * (q_len + 1) / 2 per
sequence. The cache has kv block size 256 (the engine's default) with shuffled block tables. Peers: torch
SDPA on the same K/V already gathered contiguous as [B, Hq, L, D] (kv heads repeated for the group),
flash and cuDNN backends, causal (bottom-right aligned where there is a prefix).
Knob (environment): TRITIUM_BENCH_KV_BLOCK=16.
"""
from __future__ import annotations

import os

import torch

from benchmarks.kernels.harness import Row, time_us
from tritium.kernels.attention_ref import gather_kv, random_paged_kv
from tritium.kernels.prefill_attention import prefill_attention

MODELS = {"0.6B": (16, 8), "8B": (32, 8)}
D = 128
SHAPES = [(1, 1024), (1, 4096), (1, 16384), (16, 1024)]  # (sequences, tokens each)
DEVICE = "cuda"  # a CPU dry run of this code may set "cpu"
BLOCK = int(os.environ.get("TRITIUM_BENCH_KV_BLOCK", "256"))


def _time_or_none(fn, label):
    try:
        return time_us(fn)
    except Exception as e:  # noqa: BLE001 (a failing peer must not stop the table)
        print(f"  [{label}] failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return None


def _sdpa_peer(backend, q4, k4, v4, scale, prefix, label):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.bias import causal_lower_right

    F = torch.nn.functional
    if prefix:
        mask = causal_lower_right(q4.shape[2], k4.shape[2])
        fn = lambda: F.scaled_dot_product_attention(q4, k4, v4, attn_mask=mask, scale=scale)  # noqa: E731
    else:
        fn = lambda: F.scaled_dot_product_attention(q4, k4, v4, is_causal=True, scale=scale)  # noqa: E731
    try:
        with sdpa_kernel(getattr(SDPBackend, backend)):
            return _time_or_none(fn, label)
    except Exception as e:  # noqa: BLE001
        print(f"  [{label}] failed: {type(e).__name__}")
        return None


def _bench_shape(model, hq, hkv, n_seqs, length, prefix) -> Row:
    q_len = length - prefix
    kc, vc, bt = random_paged_kv([length] * n_seqs, hkv, D, BLOCK, dtype=torch.bfloat16, device=DEVICE,
                                 poison=False)
    q = torch.randn(n_seqs * q_len, hq, D, device=DEVICE, dtype=torch.bfloat16)
    cu = torch.arange(0, n_seqs + 1, device=DEVICE, dtype=torch.int32) * q_len
    seq_lens = torch.full((n_seqs,), length, device=DEVICE, dtype=torch.int32)
    out = torch.empty_like(q)
    scale = D**-0.5
    us = time_us(lambda: prefill_attention(q, kc, vc, cu, seq_lens, bt, q_len, scale, out=out))

    group = hq // hkv
    q4 = q.view(n_seqs, q_len, hq, D).transpose(1, 2).contiguous()
    k4, v4 = (
        torch.stack([gather_kv(c, bt[b], length).to(torch.bfloat16) for b in range(n_seqs)])
        .repeat_interleave(group, dim=2).transpose(1, 2).contiguous()
        for c in (kc, vc)
    )
    label = f"{model} {n_seqs}x{length}" + (f" prefix{prefix}" if prefix else "")
    peers = {
        "sdpa_flash": _sdpa_peer("FLASH_ATTENTION", q4, k4, v4, scale, prefix, f"{label} sdpa_flash"),
        "sdpa_cudnn": _sdpa_peer("CUDNN_ATTENTION", q4, k4, v4, scale, prefix, f"{label} sdpa_cudnn"),
    }
    pairs = n_seqs * (q_len * prefix + q_len * (q_len + 1) // 2)
    n_bytes = 2 * (2 * q.numel() + 2 * n_seqs * length * hkv * D)  # q read, out written, K and V read
    del kc, vc, q4, k4, v4
    torch.cuda.empty_cache()
    return Row(kernel="prefill_attention", shape=f"{label} bs{BLOCK}", us=us, bytes=n_bytes,
               flops=4 * D * hq * pairs, peers=peers)


def run(ceilings) -> list:
    rows = []
    for model, (hq, hkv) in MODELS.items():
        for n_seqs, length in SHAPES:
            for prefix in (0, length // 2):
                rows.append(_bench_shape(model, hq, hkv, n_seqs, length, prefix))
    return rows
