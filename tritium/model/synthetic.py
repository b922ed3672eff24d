"""Synthetic Hugging Face-format checkpoints (Qwen3, Qwen3-MoE, Qwen2, Qwen2-MoE, Llama, Mistral, Mixtral,
Phi-3): random weights at chosen shapes, a real tokenizer.

`python -m tritium.model.synthetic --preset NAME [OUT_DIR]` (NAME: a key of PRESETS) writes config.json,
model.safetensors (sharded with an index above SHARD_BYTES), generation_config.json and tokenizer files with a
chat template. transformers loads the directory unchanged, which is how tritium's correctness is checked.

Weights are seeded per tensor (same preset and seed -> same bytes) and scaled so the model is not near-identity
and next-token distributions are peaked:
- q/k/v/gate/up ~ N(0, 1/fan_in): unit-RMS activations after each RMSNorm;
- o_proj/down ~ N(0, (gain * EMBED_STD)^2/fan_in) with gain = sqrt(hidden / layers): the sublayers together
  outweigh the token's own embedding (with tied embeddings a weaker stack makes the model echo its input), so
  every layer, and attention across positions, changes the next token;
- the final norm (or the untied head) is scaled so logits have a standard deviation of about LOGIT_STD;
- MoE routers (and Qwen2-MoE's shared-expert gate) ~ N(0, ROUTER_STD^2 / hidden).
Norm weights are 1 + N(0, 0.1^2) so a kernel that forgets to apply them is caught; Qwen2's q/k/v biases are
N(0, BIAS_STD^2).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch

from tritium.model.build_tokenizer import SPECIAL_TOKENS, TOKENIZER_DIR
from tritium.platform import cache_root

_TINY = dict(num_hidden_layers=2, vocab_size=1024, max_position_embeddings=4096, torch_dtype="float32")
PRESETS = {
    "tiny": dict(family="qwen3", hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                 intermediate_size=256, tie_word_embeddings=True, **_TINY),
    "qwen2-tiny": dict(family="qwen2", hidden_size=192, num_attention_heads=6, num_key_value_heads=2,
                       intermediate_size=384, tie_word_embeddings=True, **_TINY),  # GQA group of 3, head_dim 32
    "llama-tiny": dict(family="llama", hidden_size=128, num_attention_heads=4, num_key_value_heads=1,
                       intermediate_size=256, tie_word_embeddings=False, rope_theta=10000.0,
                       # Llama 3.1 scaling with a short original context, so its blended band falls inside
                       # the positions a CPU test reaches
                       rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                         original_max_position_embeddings=256), **_TINY),
    # one sparse layer and one dense one (mlp_only_layers), skewed routing when an expert's logit is large
    "qwen3-moe-tiny": dict(family="qwen3_moe", hidden_size=128, num_attention_heads=4, num_key_value_heads=2,
                           head_dim=64, intermediate_size=256, moe_intermediate_size=64, num_experts=8,
                           num_experts_per_tok=2, norm_topk_prob=True, mlp_only_layers=[1],
                           tie_word_embeddings=False, **_TINY),
    # a shared expert beside 8 routed ones, the top 4 of them not renormalized
    "qwen2-moe-tiny": dict(family="qwen2_moe", hidden_size=128, num_attention_heads=4, num_key_value_heads=2,
                           intermediate_size=256, moe_intermediate_size=32, shared_expert_intermediate_size=96,
                           num_experts=8, num_experts_per_tok=4, norm_topk_prob=False, mlp_only_layers=[],
                           tie_word_embeddings=False, **_TINY),
    # a sliding window shorter than max_position_embeddings: the engine caps the context at it
    "mistral-tiny": dict(family="mistral", hidden_size=128, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=256, tie_word_embeddings=False, sliding_window=512, **_TINY),
    "phi3-tiny": dict(family="phi3", hidden_size=128, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=256, tie_word_embeddings=False, sliding_window=None, **_TINY),
    "mixtral-tiny": dict(family="mixtral", hidden_size=128, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64, num_local_experts=4, num_experts_per_tok=2,
                         tie_word_embeddings=False, sliding_window=None, **_TINY),
    "qwen3-0.6b": dict(family="qwen3", num_hidden_layers=28, hidden_size=1024, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, intermediate_size=3072, vocab_size=151936,
                       tie_word_embeddings=True, max_position_embeddings=40960, torch_dtype="bfloat16"),
    "qwen3-8b": dict(family="qwen3", num_hidden_layers=36, hidden_size=4096, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, intermediate_size=12288, vocab_size=151936,
                     tie_word_embeddings=False, max_position_embeddings=40960, torch_dtype="bfloat16"),
    # GPU tests: Qwen3-0.6B's attention, 64 experts of width 384 (top 8) in every layer; 1.5 GB in bf16
    "qwen3-moe-small": dict(family="qwen3_moe", num_hidden_layers=8, hidden_size=1024, num_attention_heads=16,
                            num_key_value_heads=8, head_dim=128, intermediate_size=3072, moe_intermediate_size=384,
                            num_experts=64, num_experts_per_tok=8, norm_topk_prob=True, mlp_only_layers=[],
                            vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=40960,
                            torch_dtype="bfloat16"),
    "qwen3-30b-a3b": dict(family="qwen3_moe", num_hidden_layers=48, hidden_size=2048, num_attention_heads=32,
                          num_key_value_heads=4, head_dim=128, intermediate_size=6144, moe_intermediate_size=768,
                          num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, mlp_only_layers=[],
                          vocab_size=151936, tie_word_embeddings=False, max_position_embeddings=40960,
                          torch_dtype="bfloat16"),
    "qwen2.5-0.5b": dict(family="qwen2", num_hidden_layers=24, hidden_size=896, num_attention_heads=14,
                         num_key_value_heads=2, intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True,
                         max_position_embeddings=32768, torch_dtype="bfloat16"),
    "llama-3.2-1b": dict(family="llama", num_hidden_layers=16, hidden_size=2048, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, intermediate_size=8192, vocab_size=128256,
                         tie_word_embeddings=True, max_position_embeddings=131072, torch_dtype="bfloat16",
                         rope_theta=500000.0,
                         rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                           original_max_position_embeddings=8192)),
}
# What each family's config.json holds beyond the preset's shapes.
_FAMILIES = {
    "qwen3": dict(architectures=["Qwen3ForCausalLM"], model_type="qwen3", attention_bias=False, rms_norm_eps=1e-6,
                  rope_theta=1000000.0, rope_scaling=None, sliding_window=None, use_sliding_window=False),
    "qwen3_moe": dict(architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe", attention_bias=False,
                      rms_norm_eps=1e-6, rope_theta=1000000.0, rope_scaling=None, sliding_window=None,
                      use_sliding_window=False, decoder_sparse_step=1),
    "qwen2_moe": dict(architectures=["Qwen2MoeForCausalLM"], model_type="qwen2_moe", qkv_bias=True,
                      rms_norm_eps=1e-6, rope_theta=1000000.0, rope_scaling=None, sliding_window=None,
                      use_sliding_window=False, decoder_sparse_step=1),
    "mistral": dict(architectures=["MistralForCausalLM"], model_type="mistral", rms_norm_eps=1e-5,
                    rope_theta=1000000.0),
    "phi3": dict(architectures=["Phi3ForCausalLM"], model_type="phi3", rms_norm_eps=1e-5, rope_theta=10000.0,
                 original_max_position_embeddings=4096, attention_bias=False, pad_token_id=0),
    "mixtral": dict(architectures=["MixtralForCausalLM"], model_type="mixtral", rms_norm_eps=1e-5,
                    rope_theta=1000000.0, router_jitter_noise=0.0),
    "qwen2": dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", rms_norm_eps=1e-6, rope_theta=1000000.0,
                  rope_scaling=None, sliding_window=None, use_sliding_window=False),
    "llama": dict(architectures=["LlamaForCausalLM"], model_type="llama", attention_bias=False, mlp_bias=False,
                  rms_norm_eps=1e-5, pretraining_tp=1),
}
FORMAT_VERSION = 1  # bump when the bytes a preset produces change, so caches are rebuilt
SHARD_BYTES = 2 * 1024**3
EMBED_STD = 0.05
BIAS_STD = 0.5  # against unit-RMS projections: large enough that a dropped bias changes the tokens
LOGIT_STD = 6.0
ROUTER_STD = 2.0
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _special_ids() -> dict[str, int]:
    vocab = json.loads((TOKENIZER_DIR / "tokenizer.json").read_text())["added_tokens"]
    return {t["content"]: t["id"] for t in vocab if t["content"] in SPECIAL_TOKENS}


def make_config(preset: str) -> dict:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    shapes = dict(PRESETS[preset])
    family = shapes.pop("family")
    ids = _special_ids()
    cfg = {**_FAMILIES[family], "attention_dropout": 0.0, "hidden_act": "silu", "initializer_range": 0.02}
    if family.startswith("qwen"):
        cfg["max_window_layers"] = shapes["num_hidden_layers"]
    cfg.update(use_cache=True, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], **shapes)
    return cfg


def _tensor_specs(cfg: dict):
    """(name, shape, kind) for every checkpoint tensor, in a fixed order."""
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    d = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    hq, hkv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    yield "model.embed_tokens.weight", (cfg["vocab_size"], h), "embed"
    packed = cfg["model_type"] == "phi3"  # q|k|v and gate|up as one tensor each
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        yield p + "input_layernorm.weight", (h,), "norm"
        if packed:
            yield p + "self_attn.qkv_proj.weight", (hq + 2 * hkv, h), "in"
        else:
            yield p + "self_attn.q_proj.weight", (hq, h), "in"
            yield p + "self_attn.k_proj.weight", (hkv, h), "in"
            yield p + "self_attn.v_proj.weight", (hkv, h), "in"
        if cfg["model_type"] in ("qwen2", "qwen2_moe"):
            yield p + "self_attn.q_proj.bias", (hq,), "bias"
            yield p + "self_attn.k_proj.bias", (hkv,), "bias"
            yield p + "self_attn.v_proj.bias", (hkv,), "bias"
        yield p + "self_attn.o_proj.weight", (h, hq), "out"
        if cfg["model_type"] in ("qwen3", "qwen3_moe"):
            yield p + "self_attn.q_norm.weight", (d,), "norm"
            yield p + "self_attn.k_norm.weight", (d,), "norm"
        yield p + "post_attention_layernorm.weight", (h,), "norm"
        if cfg["model_type"] in ("qwen3_moe", "qwen2_moe") and n not in cfg["mlp_only_layers"]:
            yield from _moe_specs(p + "mlp.", cfg, cfg["moe_intermediate_size"], ("gate_proj", "up_proj", "down_proj"))
            continue
        if cfg["model_type"] == "mixtral":
            yield from _moe_specs(p + "block_sparse_moe.", cfg, i, ("w1", "w3", "w2"))
            continue
        if packed:
            yield p + "mlp.gate_up_proj.weight", (2 * i, h), "in"
        else:
            yield p + "mlp.gate_proj.weight", (i, h), "in"
            yield p + "mlp.up_proj.weight", (i, h), "in"
        yield p + "mlp.down_proj.weight", (h, i), "out"
    yield "model.norm.weight", (h,), "final_norm"
    if not cfg["tie_word_embeddings"]:
        yield "lm_head.weight", (cfg["vocab_size"], h), "embed"


def _moe_specs(p: str, cfg: dict, i: int, names: tuple):
    """A sparse block's tensors: the router and each expert's gated MLP of width i, under the checkpoint's
    per-expert names (gate, up, down)."""
    h, (gate, up, down) = cfg["hidden_size"], names
    num_experts = cfg.get("num_experts") or cfg["num_local_experts"]
    yield p + "gate.weight", (num_experts, h), "router"
    for e in range(num_experts):
        yield p + f"experts.{e}.{gate}.weight", (i, h), "in"
        yield p + f"experts.{e}.{up}.weight", (i, h), "in"
        yield p + f"experts.{e}.{down}.weight", (h, i), "out"
    if cfg.get("shared_expert_intermediate_size"):  # Qwen2-MoE
        s = cfg["shared_expert_intermediate_size"]
        yield p + "shared_expert.gate_proj.weight", (s, h), "in"
        yield p + "shared_expert.up_proj.weight", (s, h), "in"
        yield p + "shared_expert.down_proj.weight", (h, s), "out"
        yield p + "shared_expert_gate.weight", (1, h), "router"


def _make_tensor(shape, kind: str, cfg: dict, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(shape, generator=gen, dtype=torch.float32)
    h = cfg["hidden_size"]
    if kind == "embed":
        return x * EMBED_STD
    if kind == "bias":
        return x * BIAS_STD
    if kind == "in":
        return x / math.sqrt(shape[1])
    if kind == "router":  # logits of std ROUTER_STD: some tokens split between experts, some pick one clearly
        return x * (ROUTER_STD / math.sqrt(shape[1]))
    if kind == "out":
        gain = math.sqrt(h / cfg["num_hidden_layers"])
        return x * (gain * EMBED_STD / math.sqrt(shape[1]))
    scale = LOGIT_STD / (EMBED_STD * math.sqrt(h)) if kind == "final_norm" else 1.0
    return scale * (1.0 + 0.1 * x)


def write_checkpoint(preset: str, out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Write the preset's checkpoint into out_dir (created if needed). Returns the directory."""
    from safetensors.torch import save_file

    cfg = make_config(preset)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, cfg["torch_dtype"])
    shards: list[dict[str, torch.Tensor]] = [{}]
    shard_bytes = 0
    for index, (name, shape, kind) in enumerate(_tensor_specs(cfg)):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
        t = _make_tensor(shape, kind, cfg, gen).to(dtype).contiguous()
        nbytes = t.numel() * t.element_size()
        if shard_bytes and shard_bytes + nbytes > SHARD_BYTES:
            shards.append({})
            shard_bytes = 0
        shards[-1][name] = t
        shard_bytes += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map, total = {}, 0
        for k, shard in enumerate(shards):
            fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(out / fname), metadata={"format": "pt"})
            for name, t in shard.items():
                weight_map[name] = fname
                total += t.numel() * t.element_size()
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    _write_metadata(cfg, out)
    return out


def _write_metadata(cfg: dict, out: Path) -> None:
    ids = _special_ids()
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    gen_cfg = {"bos_token_id": ids["<|endoftext|>"], "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
               "pad_token_id": ids["<|endoftext|>"], "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(gen_cfg, indent=2))
    shutil.copyfile(TOKENIZER_DIR / "tokenizer.json", out / "tokenizer.json")
    tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
               "bos_token": None, "unk_token": None, "add_bos_token": False, "clean_up_tokenization_spaces": False,
               "model_max_length": cfg["max_position_embeddings"], "chat_template": CHAT_TEMPLATE}
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))


def ensure_checkpoint(preset: str, seed: int = 0) -> Path:
    """The preset's checkpoint from the cache, written there first if missing."""
    make_config(preset)  # validates the name
    path = cache_root() / "checkpoints" / f"{preset}-s{seed}-v{FORMAT_VERSION}"
    if (path / "config.json").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{preset}-", dir=path.parent))
    write_checkpoint(preset, tmp, seed)
    try:
        tmp.rename(path)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tritium.model.synthetic", description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("out_dir", nargs="?", help="where to write (default: the cache, ~/.cache/tritium)")
    args = ap.parse_args(argv)
    path = write_checkpoint(args.preset, args.out_dir, args.seed) if args.out_dir else ensure_checkpoint(
        args.preset, args.seed)
    print(path)


if __name__ == "__main__":
    main()
