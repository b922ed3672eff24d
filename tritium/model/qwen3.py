"""Qwen3 (dense) on tritium kernels.

Per layer: input RMSNorm (fused with the residual add), packed QKV projection, per-head q_norm/k_norm and RoPE
(in place on views of the packed QKV), KV store + paged attention, o_proj, post-attention add+RMSNorm, gate/up
projection, SiLU-and-mul, down projection. The residual stream is kept in the model dtype, as in transformers.
`forward` returns hidden states for all new tokens; `compute_logits` runs the LM head only on the rows that sample.
"""
from __future__ import annotations

import torch
from torch import nn

from tritium.kernels.activation import silu_and_mul
from tritium.kernels.rmsnorm import add_rms_norm, rms_norm
from tritium.kernels.rope import qk_norm_rope, rope_cos_sin
from tritium.model.attention import Attention, AttentionMetadata
from tritium.model.layers import (ColumnParallelLinear, PackedColumnLinear, ParallelLMHead, RowParallelLinear,
                                  VocabParallelEmbedding, qkv_linear, tp_rank_and_size)


class RMSNorm(nn.Module):
    """Holds the weight; the math is the fused kernel's. Called with a residual it adds it first and returns
    (normed, new residual)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size), requires_grad=False)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if residual is None:
            return rms_norm(x, self.weight, self.eps)
        return add_rms_norm(x, residual, self.weight, self.eps, residual_out=residual)


class Qwen3Attention(nn.Module):
    def __init__(self, cfg, rope: torch.Tensor):
        super().__init__()
        _, tp = tp_rank_and_size()
        self.head_dim = cfg.head_dim
        self.num_heads = cfg.num_attention_heads // tp
        self.num_kv_heads = max(1, cfg.num_key_value_heads // tp)
        self.qkv_proj = qkv_linear(cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads)
        self.o_proj = RowParallelLinear(cfg.num_attention_heads * cfg.head_dim, cfg.hidden_size)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.rope = rope  # [max_position, head_dim] fp32 cos/sin table, shared by all layers
        self.attn = Attention(self.num_heads, self.num_kv_heads, cfg.head_dim, cfg.head_dim**-0.5)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        t, d = hidden.shape[0], self.head_dim
        qkv = self.qkv_proj(hidden)  # [T, (Hq + 2 Hkv) * D]
        q, k, v = qkv.split([self.num_heads * d, self.num_kv_heads * d, self.num_kv_heads * d], dim=-1)
        q, k, v = q.view(t, self.num_heads, d), k.view(t, self.num_kv_heads, d), v.view(t, self.num_kv_heads, d)
        qk_norm_rope(q, k, self.q_norm.weight, self.k_norm.weight, self.q_norm.eps, positions, self.rope)
        o = self.attn(q, k, v, meta)  # [T, Hq, D]
        return self.o_proj(o.view(t, self.num_heads * d))


class Qwen3MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate_up_proj = PackedColumnLinear(cfg.hidden_size, {0: cfg.intermediate_size, 1: cfg.intermediate_size})
        self.down_proj = RowParallelLinear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_and_mul(self.gate_up_proj(x)))


class Qwen3DecoderLayer(nn.Module):
    def __init__(self, cfg, rope: torch.Tensor):
        super().__init__()
        self.self_attn = Qwen3Attention(cfg, rope)
        self.mlp = Qwen3MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, positions, hidden, residual, meta):
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, meta)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class Qwen3Model(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        # fp32 cos/sin table, a plain attribute (not a buffer) so casting the model to bf16 leaves it alone;
        # built on the device the model is constructed under (the loader uses a torch.device context).
        self.rope = rope_cos_sin(cfg.head_dim, cfg.max_position_embeddings, rope_theta(cfg),
                                 device=torch.get_default_device())
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Qwen3DecoderLayer(cfg, self.rope) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, input_ids, positions, meta):
        hidden, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual, meta)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class Qwen3ForCausalLM(nn.Module):
    # checkpoint name fragment -> (parameter name fragment, packed shard id)
    packed_modules = {
        "q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.model = Qwen3Model(cfg)
        self.lm_head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """input_ids, positions [T] -> hidden states [T, hidden]."""
        return self.model(input_ids, positions, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden] (only the rows that sample) -> logits [N, vocab] (None off rank 0 under TP)."""
        return self.lm_head(hidden)


def rope_theta(cfg) -> float:
    """rope_theta from `rope_parameters` (transformers >= 5) or the top level (older configs)."""
    params = getattr(cfg, "rope_parameters", None) or {}
    theta = params.get("rope_theta", getattr(cfg, "rope_theta", None))
    if theta is None:
        raise ValueError("config has no rope_theta (neither in rope_parameters nor at the top level)")
    return float(theta)
