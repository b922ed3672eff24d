"""Paged decode attention at Qwen3-0.6B (16 q / 8 kv heads) and 8B (32 / 8) layouts, head_dim 128, bf16,
batch {1, 8, 64, 256} x context {512, 2k, 8k, 32k}, kv block size 256 (the engine's default).

Bytes: the K and V of every context token read once (q and out are negligible). Each sequence's blocks
lie in order, so the same memory viewed as [B, Hkv, ctx, D] is the KV "already gathered contiguous" for
the peers: torch SDPA (flash and cuDNN backends) with the GQA group as the query length (one KV read per
kv head, as ours). Inputs are rotated over several sets when one set fits in L2; small sizes are timed
inside a CUDA graph of many calls. Shapes whose cache does not fit the free memory are skipped.
Knobs (environment): TRITIUM_BENCH_DECODE_BATCHES="1,8", TRITIUM_BENCH_DECODE_CONTEXTS="512,32768",
TRITIUM_BENCH_KV_BLOCK=16.
"""
from __future__ import annotations

import math
import os

import torch

from benchmarks.kernels.harness import Row, time_us
from tritium.kernels.decode_attention import decode_attention

MODELS = {"0.6B": (16, 8), "8B": (32, 8)}
D = 128
E = 2  # bf16
BATCHES = [int(x) for x in os.environ.get("TRITIUM_BENCH_DECODE_BATCHES", "1,8,64,256").split(",")]
CONTEXTS = [int(x) for x in os.environ.get("TRITIUM_BENCH_DECODE_CONTEXTS", "512,2048,8192,32768").split(",")]
DEVICE = "cuda"  # a CPU dry run of this code may set "cpu"
BLOCK = int(os.environ.get("TRITIUM_BENCH_KV_BLOCK", "256"))
ROTATE_BYTES = 256 << 20  # several times the 50-60 MB L2
MAX_SETS = 128  # 1 x 512 tokens is 2 MiB of KV
GRAPH_MAX_BYTES = 512 << 20  # one call reads less than this: time inside a CUDA graph


def _time_or_none(fn, graph, label):
    try:
        return time_us(fn, graph=graph)
    except Exception as e:  # noqa: BLE001 (a failing peer must not stop the table)
        print(f"  [{label}] failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return None


def _cycle(fns):
    state = {"i": 0}

    def call():
        fns[state["i"] % len(fns)]()
        state["i"] += 1

    return call


def _sdpa_peer(backend, sets, scale, label, graph):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    F = torch.nn.functional
    fns = [lambda s=s: F.scaled_dot_product_attention(s["q4"], s["k4"], s["v4"], scale=scale) for s in sets]
    try:
        with sdpa_kernel(getattr(SDPBackend, backend)):
            return _time_or_none(_cycle(fns), graph, label)
    except Exception as e:  # noqa: BLE001
        print(f"  [{label}] failed: {type(e).__name__}")
        return None


def _bench_shape(model, hq, hkv, batch, ctx) -> Row | None:
    group = hq // hkv
    kv_bytes = 2 * batch * ctx * hkv * D * E
    n_sets = max(1, min(MAX_SETS, math.ceil(ROTATE_BYTES / kv_bytes)))
    free, _ = torch.cuda.mem_get_info()
    while n_sets > 1 and n_sets * kv_bytes > 0.8 * free:
        n_sets -= 1
    label = f"{model} b{batch} ctx{ctx}"
    if n_sets * kv_bytes > 0.8 * free:
        print(f"  [decode_attention {label}] skipped: {kv_bytes / 2**30:.1f} GiB of KV does not fit")
        return None
    bps = -(-ctx // BLOCK)  # blocks per sequence
    shape = (n_sets * batch * bps, BLOCK, hkv, D)
    k_cache = torch.randn(shape, device=DEVICE, dtype=torch.bfloat16)
    v_cache = torch.randn(shape, device=DEVICE, dtype=torch.bfloat16)
    seq_lens = torch.full((batch,), ctx, dtype=torch.int32, device=DEVICE)
    scale = D**-0.5
    sets = []
    for r in range(n_sets):
        base = r * batch * bps
        tables = (base + torch.arange(batch * bps, device=DEVICE, dtype=torch.int32)).view(batch, bps)
        q = torch.randn(batch, hq, D, device=DEVICE, dtype=torch.bfloat16)
        # the same memory as [B, Hkv, ctx, D] (tokens in order), q as [B, Hkv, G, D]
        kv4 = [c[base : base + batch * bps].view(batch, bps * BLOCK, hkv, D)[:, :ctx].transpose(1, 2)
               for c in (k_cache, v_cache)]
        sets.append(dict(q=q, tables=tables, out=torch.empty_like(q), q4=q.view(batch, hkv, group, D),
                         k4=kv4[0], v4=kv4[1]))
    graph = kv_bytes <= GRAPH_MAX_BYTES
    ours = [lambda s=s: decode_attention(s["q"], k_cache, v_cache, seq_lens, s["tables"], scale, out=s["out"])
            for s in sets]
    us = time_us(_cycle(ours), graph=graph)
    peers = {
        "sdpa_flash": _sdpa_peer("FLASH_ATTENTION", sets, scale, f"{label} sdpa_flash", graph),
        "sdpa_cudnn": _sdpa_peer("CUDNN_ATTENTION", sets, scale, f"{label} sdpa_cudnn", graph),
    }
    del sets, k_cache, v_cache
    torch.cuda.empty_cache()
    return Row(kernel="decode_attention", shape=f"{label} bs{BLOCK}", us=us, bytes=kv_bytes,
               flops=4 * batch * hq * ctx * D, peers=peers)


def run(ceilings) -> list:
    rows = []
    for model, (hq, hkv) in MODELS.items():
        for batch in BATCHES:
            for ctx in CONTEXTS:
                row = _bench_shape(model, hq, hkv, batch, ctx)
                if row is not None:
                    rows.append(row)
    return rows
