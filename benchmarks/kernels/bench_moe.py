"""Fused MoE MLP at Qwen3-30B-A3B's expert shapes (128 experts, top 8, hidden 2048, expert width 768), bf16,
against transformers' experts module on the same weights and routing: its `eager` per-expert loop and its
`grouped_mm` path (torch._grouped_mm) where this torch has it. Ours is timed inside a CUDA graph (as the
decode graph runs it); the peers sync the host (nonzero over the routing), so they are timed per call.
Bytes: the weights of the experts the routing touches (each read once), x and the output; FLOPs: 3 GEMMs
of 2 * T * K * I * H each. The routing is random (softmax of N(0, 1) logits), as in a model."""
from __future__ import annotations

import torch

from benchmarks.kernels import rowbench as rb
from benchmarks.kernels.harness import Row, time_us
from tritium.kernels.moe import fused_moe, moe_route

EXPERTS, TOP_K, HIDDEN, INTER = 128, 8, 2048, 768
TOKENS = [1, 2, 8, 64, 512, 4096]


def _peer(impl: str, w13, w2):
    """transformers' Qwen3MoeExperts over our weights, with experts implementation `impl` (None if missing)."""
    try:
        from transformers import Qwen3MoeConfig
        from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeExperts

        cfg = Qwen3MoeConfig(hidden_size=HIDDEN, moe_intermediate_size=INTER, num_experts=EXPERTS,
                             num_experts_per_tok=TOP_K)
        cfg._experts_implementation = impl
        experts = Qwen3MoeExperts(cfg).to(device="cuda", dtype=torch.bfloat16)
        experts.gate_up_proj.data, experts.down_proj.data = w13, w2
        return experts
    except Exception as e:  # noqa: BLE001 (a peer that cannot be built is left out, not fatal)
        print(f"moe peer {impl!r} unavailable: {e}")
        return None


def run(ceilings) -> list:
    w13 = rb.randn(EXPERTS, 2 * INTER, HIDDEN) * HIDDEN**-0.5
    w2 = rb.randn(EXPERTS, HIDDEN, INTER) * INTER**-0.5
    peers = {impl: _peer(impl, w13, w2) for impl in ("eager", "grouped_mm")}
    rows = []
    for t in TOKENS:
        x = rb.randn(t, HIDDEN)
        weights, ids = moe_route(torch.randn(t, EXPERTS, device="cuda"), TOP_K, True)
        touched = ids.unique().numel()
        timed = {}
        with torch.no_grad():
            for impl, experts in peers.items():
                if experts is None:
                    continue
                try:
                    timed[impl] = time_us(lambda experts=experts: experts(x, ids, weights.to(x.dtype)))
                except Exception as e:  # noqa: BLE001
                    print(f"moe peer {impl!r} failed at T={t}: {e}")
        us = time_us(lambda: fused_moe(x, w13, w2, weights, ids), graph=True)
        rows.append(Row("fused_moe", f"T={t} E={EXPERTS} K={TOP_K} H={HIDDEN} I={INTER}", us,
                        bytes=2 * (touched * 3 * INTER * HIDDEN + 2 * t * HIDDEN),
                        flops=2 * t * TOP_K * 3 * INTER * HIDDEN, peers=timed))
    return rows
