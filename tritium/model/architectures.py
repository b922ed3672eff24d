"""The architectures tritium runs, by the name config.json gives them: each a DecoderForCausalLM with the
switches of its DecoderSpec, and where it needs them its checkpoint renames and context limit.
"""
from __future__ import annotations

from tritium.model.decoder import DecoderForCausalLM, DecoderSpec


class Qwen3ForCausalLM(DecoderForCausalLM):
    @staticmethod
    def spec(cfg) -> DecoderSpec:
        bias = bool(getattr(cfg, "attention_bias", False))
        return DecoderSpec(qkv_bias=bias, o_bias=bias, qk_norm=True)


class Qwen2ForCausalLM(DecoderForCausalLM):
    @staticmethod
    def spec(cfg) -> DecoderSpec:
        if getattr(cfg, "use_sliding_window", False):
            raise ValueError("Qwen2 with use_sliding_window=true is not supported (sliding-window attention)")
        return DecoderSpec(qkv_bias=True)


class LlamaForCausalLM(DecoderForCausalLM):
    @staticmethod
    def spec(cfg) -> DecoderSpec:
        bias = bool(getattr(cfg, "attention_bias", False))
        return DecoderSpec(qkv_bias=bias, o_bias=bias, mlp_bias=bool(getattr(cfg, "mlp_bias", False)))


class Qwen3MoeForCausalLM(DecoderForCausalLM):
    @staticmethod
    def spec(cfg) -> DecoderSpec:
        bias = bool(getattr(cfg, "attention_bias", False))
        return DecoderSpec(qkv_bias=bias, o_bias=bias, qk_norm=True, moe=True,
                           moe_renormalize=bool(getattr(cfg, "norm_topk_prob", False)))


class Qwen2MoeForCausalLM(DecoderForCausalLM):
    @staticmethod
    def spec(cfg) -> DecoderSpec:
        Qwen2ForCausalLM.spec(cfg)  # the same sliding-window refusal
        return DecoderSpec(qkv_bias=bool(getattr(cfg, "qkv_bias", True)), moe=True,
                           moe_renormalize=bool(getattr(cfg, "norm_topk_prob", False)),
                           moe_shared_expert=bool(getattr(cfg, "shared_expert_intermediate_size", 0)))


def _window_capped(cfg) -> int:
    """Mistral's sliding window: a context no longer than the window attends to all of it, which is what the
    attention kernels compute, so the window caps the context instead of being implemented."""
    window = getattr(cfg, "sliding_window", None)
    return min(cfg.max_position_embeddings, window or cfg.max_position_embeddings)


class MistralForCausalLM(LlamaForCausalLM):
    max_context = staticmethod(_window_capped)


class Phi3ForCausalLM(LlamaForCausalLM):
    """Llama's layer; its checkpoints hold qkv_proj and gate_up_proj packed already (the linear layers' loaders
    split them). Phi-3.5's "longrope" RoPE is refused by model_inv_freq."""
    max_context = staticmethod(_window_capped)


class MixtralForCausalLM(DecoderForCausalLM):
    renamed_modules = {"block_sparse_moe": "mlp"}
    max_context = staticmethod(_window_capped)

    @staticmethod
    def spec(cfg) -> DecoderSpec:
        return DecoderSpec(moe=True, moe_renormalize=True)


ARCHITECTURES = {cls.__name__: cls for cls in (Qwen3ForCausalLM, Qwen2ForCausalLM, LlamaForCausalLM,
                                                Qwen3MoeForCausalLM, Qwen2MoeForCausalLM, MistralForCausalLM,
                                                MixtralForCausalLM, Phi3ForCausalLM)}
