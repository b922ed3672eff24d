"""The sparse MoE block of Qwen3-MoE, Qwen2-MoE and Mixtral: a router picks each token's top-k experts, whose gated
MLPs run as one grouped GEMM (kernels/moe.py) and are summed with the routing weights.

Under tensor parallelism every rank holds all experts, each cut along its intermediate width (gate and up rows,
down columns), as the dense MLP is: the partial outputs are summed over ranks. The router is replicated.
Parameter names follow the checkpoint's module path (`mlp.gate`, `mlp.experts`); the loader gives each expert's
`gate_proj` / `up_proj` / `down_proj` (Mixtral: `w1` / `w3` / `w2`) tensor to the experts' weight_loader with
shard id (expert, part).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from tritium.kernels.moe import fused_moe, moe_route
from tritium.model.layers import LinearBase, _divide, default_weight_loader, tp_rank_and_size

GATE, UP, DOWN = "gate", "up", "down"  # the parts of one expert in the checkpoint


class MoEExperts(nn.Module):
    """gate_up_proj [E, 2 I_local, H] (each expert's gate rows, then up rows) and down_proj [E, H, I_local]."""

    def __init__(self, num_experts: int, hidden: int, inter: int):
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank_and_size()
        self.num_experts, self.hidden, self.inter = num_experts, hidden, inter
        self.local = _divide(inter, self.tp_size, "moe_intermediate_size")
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * self.local, hidden), requires_grad=False)
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden, self.local), requires_grad=False)
        for param, parts in ((self.gate_up_proj, (GATE, UP)), (self.down_proj, (DOWN,))):
            param.weight_loader = self.weight_loader
            param.shard_ids = {(e, part) for e in range(num_experts) for part in parts}  # all must be loaded

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        expert, part = shard_id if isinstance(shard_id, tuple) else (None, None)
        if not (isinstance(expert, int) and 0 <= expert < self.num_experts and part in (GATE, UP, DOWN)):
            raise ValueError(f"unknown expert shard {shard_id!r} ({self.num_experts} experts; parts gate, up, down)")
        want = (self.hidden, self.inter) if part == DOWN else (self.inter, self.hidden)
        if tuple(loaded.shape) != want:
            raise ValueError(f"shape mismatch for expert {expert} {part}_proj: checkpoint {tuple(loaded.shape)}, "
                             f"expected {want}")
        if part == DOWN:
            dest, loaded = self.down_proj.data[expert], loaded.narrow(1, self.tp_rank * self.local, self.local)
        else:
            rows = slice(0, self.local) if part == GATE else slice(self.local, 2 * self.local)
            dest, loaded = self.gate_up_proj.data[expert, rows], loaded.narrow(0, self.tp_rank * self.local,
                                                                               self.local)
        default_weight_loader(dest, loaded)


class SparseMoeBlock(nn.Module):
    def __init__(self, cfg, renormalize: bool, shared_expert: nn.Module | None = None):
        """shared_expert: Qwen2-MoE's dense MLP that every token also takes, scaled by a sigmoid gate."""
        super().__init__()
        num_experts = getattr(cfg, "num_experts", None) or cfg.num_local_experts
        self.top_k = cfg.num_experts_per_tok
        if not 1 <= self.top_k <= num_experts:
            raise ValueError(f"num_experts_per_tok={self.top_k} must be between 1 and num_experts={num_experts}")
        self.renormalize = renormalize
        self.gate = LinearBase(cfg.hidden_size, num_experts, tp_dim=None)  # the router
        inter = getattr(cfg, "moe_intermediate_size", None) or cfg.intermediate_size  # Mixtral: the latter
        self.experts = MoEExperts(num_experts, cfg.hidden_size, inter)
        self.shared_expert = shared_expert
        if shared_expert is not None:
            self.shared_expert_gate = LinearBase(cfg.hidden_size, 1, tp_dim=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, H] -> [T, H]: the routed experts' weighted sum (over all ranks), plus the gated shared expert."""
        weights, ids = moe_route(self.gate(x), self.top_k, self.renormalize)
        y = fused_moe(x, self.experts.gate_up_proj, self.experts.down_proj, weights, ids)
        if self.experts.tp_size > 1:
            dist.all_reduce(y)
        if self.shared_expert is not None:
            y += torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return y


def is_moe_layer(cfg, index: int) -> bool:
    """Whether layer `index` has the sparse block (Qwen3-MoE's decoder_sparse_step and mlp_only_layers)."""
    step = getattr(cfg, "decoder_sparse_step", 1) or 1
    return index not in (getattr(cfg, "mlp_only_layers", None) or []) and (index + 1) % step == 0
