"""Fused MoE MLP at Qwen3-30B-A3B's expert shapes (128 experts, top 8, hidden 2048, expert width 768), bf16,
against transformers' experts module on the same weights and routing: its `eager` per-expert loop and its
`grouped_mm` path (torch._grouped_mm) where this torch has it. Ours is timed inside a CUDA graph (as the
decode graph runs it); the peers sync the host (nonzero over the routing), so they are timed per call.
Bytes: the weights of the experts the routing touches (each read once), x and the output; FLOPs: 3 GEMMs
of 2 * T * K * I * H each. The routing is random (softmax of N(0, 1) logits), as in a model.
The routing kernels are timed too, in CUDA graphs beside their torch forms: moe_route against softmax + topk +
renormalize, moe_align's one program against moe_align_torch up to KERNEL_MAX_PAIRS and past it (where the
torch form takes over: the rows there say whether the threshold is right)."""
from __future__ import annotations

import torch

from benchmarks.kernels import rowbench as rb
from benchmarks.kernels.harness import Row, time_us
from tritium.kernels.moe import fused_moe, moe_block_m
from tritium.kernels.moe_routing import moe_align, moe_align_kernel, moe_align_torch, moe_route, moe_route_ref

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
        ids_long, weights_peer = ids.long(), weights.to(x.dtype)  # transformers' one_hot wants int64
        timed = {}
        with torch.no_grad():
            for impl, experts in peers.items():
                if experts is None:
                    continue
                try:
                    timed[impl] = time_us(lambda experts=experts: experts(x, ids_long, weights_peer))
                except Exception as e:  # noqa: BLE001
                    print(f"moe peer {impl!r} failed at T={t}: {e}")
        us = time_us(lambda: fused_moe(x, w13, w2, weights, ids), graph=True)
        rows.append(Row("fused_moe", f"T={t} E={EXPERTS} K={TOP_K} H={HIDDEN} I={INTER}", us,
                        bytes=2 * (touched * 3 * INTER * HIDDEN + 2 * t * HIDDEN),
                        flops=2 * t * TOP_K * 3 * INTER * HIDDEN, peers=timed))
        rows += _routing_rows(t)
    return rows


def _routing_rows(t: int) -> list:
    logits = torch.randn(t, EXPERTS, device="cuda").to(torch.bfloat16)
    _, ids = moe_route(logits, TOP_K, True)
    block_m = moe_block_m(t, TOP_K, EXPERTS)
    route = time_us(lambda: moe_route(logits, TOP_K, True), graph=True)
    route_torch = time_us(lambda: moe_route_ref(logits, TOP_K, True), graph=True)
    align_torch = time_us(lambda: moe_align_torch(ids, EXPERTS, block_m), graph=True)
    align = time_us(lambda: moe_align_kernel(ids, EXPERTS, block_m), graph=True)
    shape = f"T={t} E={EXPERTS} K={TOP_K} BLOCK_M={block_m}"
    return [Row("moe_route", shape, route, bytes=t * EXPERTS * 2, peers={"torch": route_torch}),
            Row("moe_align (kernel)", shape, align, bytes=t * TOP_K * 4, peers={"torch": align_torch}),
            Row("moe_align (as used)", shape, time_us(lambda: moe_align(ids, EXPERTS, block_m), graph=True),
                bytes=t * TOP_K * 4)]
