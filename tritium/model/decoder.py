"""Decoder-only models on tritium kernels: Qwen3, Qwen2 / Qwen2.5, Llama (2, 3, 3.1+), Mistral, and the
mixture-of-experts Qwen3-MoE, Qwen2-MoE and Mixtral.

They share one layer: input RMSNorm (fused with the residual add), packed QKV projection, RoPE (fused with
Qwen3's per-head q_norm / k_norm, in place on views of the packed QKV, the KV store in the same launch), paged
attention, o_proj, post-attention add+RMSNorm, gate/up projection, SiLU-and-mul, down projection. They differ
only in the switches of `DecoderSpec` (which projections have a bias, whether q/k are normed, whether the MLP is
a sparse MoE block, model/moe.py) and in the RoPE frequencies (Llama 3.1's rescaled ones, see
model_inv_freq). At a few rows (layers.few_rows: decode at batch
1-2) the norms, SiLU-and-mul and residual adds run inside the projections instead (DecoderLayer.finish). The
residual stream is kept in the model dtype, as in transformers. `forward` returns hidden states for all new
tokens; `compute_logits` runs the LM head only on the rows that sample. The forward is its pieces (`piece`:
everything between two attention calls, KV store included) with `attend` in between, so the engine can replay
the pieces from CUDA graphs. The architectures themselves (DecoderForCausalLM's subclasses, by config.json
name) are in model/architectures.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from tritium.kernels.rmsnorm import add_rms_norm, rms_norm
from tritium.kernels.rope import apply_rope, qk_norm_rope, rope_cos_sin
from tritium.kernels.rope import rope_inv_freq as default_inv_freq
from tritium.model.attention import Attention, AttentionMetadata
from tritium.model.moe import SparseMoeBlock, is_moe_layer
from tritium.model.layers import (PackedColumnLinear, ParallelLMHead, QKVParallelLinear, RowParallelLinear,
                                  VocabParallelEmbedding, few_rows, local_kv_heads, tp_rank_and_size)


@dataclass(frozen=True)
class DecoderSpec:
    qkv_bias: bool = False  # q/k/v projections add a bias (Qwen2)
    o_bias: bool = False  # o_proj adds a bias
    mlp_bias: bool = False  # gate/up/down add a bias
    qk_norm: bool = False  # per-head RMSNorm of q and k before RoPE (Qwen3)
    moe: bool = False  # the MLP of the layers is_moe_layer picks is a sparse MoE block (Qwen3-MoE, Mixtral)
    moe_renormalize: bool = False  # the top-k routing weights are rescaled to sum to 1
    moe_shared_expert: bool = False  # a sigmoid-gated dense expert beside the routed ones (Qwen2-MoE)


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


def head_dim(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


class DecoderAttention(nn.Module):
    def __init__(self, cfg, spec: DecoderSpec, rope: torch.Tensor):
        super().__init__()
        _, tp = tp_rank_and_size()
        self.head_dim = d = head_dim(cfg)
        self.qkv_proj = QKVParallelLinear(cfg.hidden_size, d, cfg.num_attention_heads, cfg.num_key_value_heads,
                                          bias=spec.qkv_bias)
        self.num_heads = cfg.num_attention_heads // tp
        self.num_kv_heads = local_kv_heads(cfg.num_key_value_heads, tp)[0]
        self.o_proj = RowParallelLinear(cfg.num_attention_heads * d, cfg.hidden_size, bias=spec.o_bias)
        if spec.qk_norm:
            self.q_norm = RMSNorm(d, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.qk_norm = spec.qk_norm
        self.rope = rope  # [max_position, head_dim] fp32 cos/sin table, shared by all layers
        self.attn = Attention(self.num_heads, self.num_kv_heads, d, d**-0.5)

    def start(self, positions: torch.Tensor, hidden: torch.Tensor, slots: torch.Tensor,
              qkv_out: torch.Tensor | None = None, norm: RMSNorm | None = None) -> torch.Tensor:
        """Up to the attention: the packed projection of hidden (norm(hidden) when given; into qkv_out
        [T, (Hq + 2 Hkv) * D] when given), q/k norm and RoPE in place, the KV store at slots [T] (-1 skips).
        Returns q [T, Hq, D], a view of the qkv rows."""
        t, d = hidden.shape[0], self.head_dim
        qkv = self.qkv_proj(hidden, out=qkv_out, norm=norm)  # [T, (Hq + 2 Hkv) * D]
        q, k, v = qkv.split([self.num_heads * d, self.num_kv_heads * d, self.num_kv_heads * d], dim=-1)
        q, k, v = q.view(t, self.num_heads, d), k.view(t, self.num_kv_heads, d), v.view(t, self.num_kv_heads, d)
        cache = (v, *self.attn.kv_cache(), slots)  # the RoPE launch stores k and v too
        if self.qk_norm:
            qk_norm_rope(q, k, self.q_norm.weight, self.k_norm.weight, self.q_norm.eps, positions, self.rope,
                         cache=cache)
        else:
            apply_rope(q, k, positions, self.rope, cache=cache)
        return q


class DecoderMLP(nn.Module):
    def __init__(self, cfg, spec: DecoderSpec, inter: int | None = None):
        super().__init__()
        inter = inter or cfg.intermediate_size
        self.gate_up_proj = PackedColumnLinear(cfg.hidden_size, {0: inter, 1: inter}, bias=spec.mlp_bias)
        self.down_proj = RowParallelLinear(inter, cfg.hidden_size, bias=spec.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.gate_up_proj(x), gated=True)  # SiLU-and-mul of [gate | up] first


class DecoderLayer(nn.Module):
    def __init__(self, cfg, spec: DecoderSpec, rope: torch.Tensor, index: int):
        super().__init__()
        self.self_attn = DecoderAttention(cfg, spec, rope)
        if spec.moe and is_moe_layer(cfg, index):
            shared = DecoderMLP(cfg, spec, cfg.shared_expert_intermediate_size) if spec.moe_shared_expert else None
            self.mlp = SparseMoeBlock(cfg, spec.moe_renormalize, shared)
        else:
            self.mlp = DecoderMLP(cfg, spec)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def start(self, positions, hidden, residual, slots, qkv_out=None):
        """The layer up to its attention: (q [T, Hq, D], residual); see DecoderAttention.start. hidden is None
        when the last projection added it into residual already (finish's few-row path); residual is None at
        layer 0, whose hidden (the embedding) starts the residual stream."""
        if residual is None:
            residual, hidden = hidden, None
        if hidden is None:  # the norm alone, in the projection's loads when few rows
            return self.self_attn.start(positions, residual, slots, qkv_out, norm=self.input_layernorm), residual
        hidden, residual = self.input_layernorm(hidden, residual)
        return self.self_attn.start(positions, hidden, slots, qkv_out), residual

    def finish(self, o, residual):
        """The layer after its attention output o [T, Hq, D]: (hidden, residual), hidden None when added."""
        o = o.view(o.shape[0], -1)
        # each projection adds into the residual stream, the next one norms it in its loads (dense MLPs only)
        if few_rows(o) and isinstance(self.mlp, DecoderMLP):
            self.self_attn.o_proj(o, add_to=residual)
            gate_up = self.mlp.gate_up_proj(residual, norm=self.post_attention_layernorm)
            self.mlp.down_proj(gate_up, gated=True, add_to=residual)
            return None, residual
        hidden, residual = self.post_attention_layernorm(self.self_attn.o_proj(o), residual)
        return self.mlp(hidden), residual


class DecoderModel(nn.Module):
    def __init__(self, cfg, spec: DecoderSpec):
        super().__init__()
        # fp32 cos/sin table, a plain attribute (not a buffer) so casting the model to bf16 leaves it alone;
        # built on the device the model is constructed under (the loader uses a torch.device context).
        d = head_dim(cfg)
        self.rope = rope_cos_sin(d, cfg.max_position_embeddings, rope_theta(cfg), device=torch.get_default_device(),
                                 inv_freq=model_inv_freq(cfg, d))
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, spec, self.rope, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def piece(self, i: int, x, residual, positions, slots, qkv_out=None):
        """The work between attention i - 1 and attention i, which is all of the forward but the attention
        kernels (engine/piecewise.py replays each piece from a CUDA graph): piece 0 embeds the ids x and
        starts layer 0, piece i finishes layer i - 1 on its attention output x and starts layer i, piece L
        (= layers) finishes the last layer and applies the final norm. Returns (q of layer i, residual), or
        (hidden, None) from piece L."""
        if i == 0:
            hidden = self.embed_tokens(x)
        else:
            hidden, residual = self.layers[i - 1].finish(x, residual)
        if i == len(self.layers):
            return (self.norm(residual) if hidden is None else self.norm(hidden, residual)[0]), None
        return self.layers[i].start(positions, hidden, residual, slots, qkv_out)

    def attend(self, i: int, q, meta, out=None):
        """Attention of layer i over the paged cache: o [T, Hq, D] (into `out` when given)."""
        return self.layers[i].self_attn.attn.attend(q, meta, out=out)

    def forward(self, input_ids, positions, meta):
        x, residual = self.piece(0, input_ids, None, positions, meta.slot_mapping)
        for i in range(len(self.layers)):
            x, residual = self.piece(i + 1, self.attend(i, x, meta), residual, positions, meta.slot_mapping)
        return x


class DecoderForCausalLM(nn.Module):
    # checkpoint name fragment -> (parameter name fragment, packed shard id)
    packed_modules = {
        "q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
    }
    renamed_modules: dict = {}  # checkpoint module name -> ours (whole dotted components)

    @staticmethod
    def spec(cfg) -> DecoderSpec:
        raise NotImplementedError

    @staticmethod
    def max_context(cfg) -> int:
        """The longest sequence the model computes exactly: max_model_len is capped by it."""
        return cfg.max_position_embeddings

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.model = DecoderModel(cfg, self.spec(cfg))
        self.lm_head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """input_ids, positions [T] -> hidden states [T, hidden]."""
        return self.model(input_ids, positions, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden] (only the rows that sample) -> logits [N, vocab], on every rank under TP."""
        return self.lm_head(hidden)


def _rope_params(cfg) -> dict:
    """RoPE settings from `rope_parameters` (transformers >= 5) or the older `rope_theta` / `rope_scaling`."""
    params = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    params.setdefault("rope_type", params.pop("type", "default"))
    return params


def rope_theta(cfg) -> float:
    theta = _rope_params(cfg).get("rope_theta", getattr(cfg, "rope_theta", None))
    if theta is None:
        raise ValueError("config has no rope_theta (neither in rope_parameters nor at the top level)")
    return float(theta)


def model_inv_freq(cfg, dim: int) -> torch.Tensor:
    """fp32 [dim / 2] inverse frequencies: theta^(-2i/dim), and for rope_type "llama3" Llama 3.1's rescaling —
    wavelengths above original_max / low_freq_factor slowed by `factor`, below original_max / high_freq_factor
    kept, and the band between blended linearly in original_max / wavelength."""
    params = _rope_params(cfg)
    kind = params["rope_type"]
    if float(params.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ValueError("partial_rotary_factor != 1 is not supported")
    inv = default_inv_freq(dim, rope_theta(cfg))
    if kind == "default":
        return inv
    if kind != "llama3":
        raise ValueError(f"rope_type {kind!r} is not supported; tritium supports 'default' and 'llama3'")
    factor, low, high = float(params["factor"]), float(params["low_freq_factor"]), float(params["high_freq_factor"])
    original = float(params.get("original_max_position_embeddings", cfg.max_position_embeddings))
    wavelen = 2 * math.pi / inv
    smooth = (original / wavelen - low) / (high - low)  # in the band: 0 at the slow end, 1 at the fast
    blended = (1 - smooth) * inv / factor + smooth * inv
    return torch.where(wavelen > original / low, inv / factor, torch.where(wavelen < original / high, inv, blended))
