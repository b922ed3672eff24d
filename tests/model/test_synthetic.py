import hashlib
import json

import pytest
import torch

from tritium.model import synthetic


def _digest(path):
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("preset,arch", [("tiny", "Qwen3ForCausalLM"), ("qwen2-tiny", "Qwen2ForCausalLM"),
                                         ("llama-tiny", "LlamaForCausalLM"),
                                         ("qwen3-moe-tiny", "Qwen3MoeForCausalLM"),
                                         ("mistral-tiny", "MistralForCausalLM"), ("mixtral-tiny", "MixtralForCausalLM"),
                                         ("qwen2-moe-tiny", "Qwen2MoeForCausalLM"), ("phi3-tiny", "Phi3ForCausalLM")])
def test_tiny_presets_load_in_transformers_with_peaked_logits(preset, arch):
    from transformers import AutoModelForCausalLM

    path = synthetic.ensure_checkpoint(preset)
    model = AutoModelForCausalLM.from_pretrained(path)
    cfg = json.loads((path / "config.json").read_text())
    assert type(model).__name__ == arch
    assert model.config.num_hidden_layers == cfg["num_hidden_layers"] == 2 and model.config.hidden_size <= 256
    assert model.config.num_attention_heads > model.config.num_key_value_heads  # GQA
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tied == cfg["tie_word_embeddings"]
    ids = torch.randint(0, cfg["vocab_size"], (2, 24))
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (2, 24, cfg["vocab_size"]) and torch.isfinite(logits).all()
    # Peaked next-token distributions: greedy comparisons must not hinge on rounding.
    top2 = logits.topk(2, dim=-1).values
    assert (top2[..., 0] - top2[..., 1]).median() > 0.3
    # Not an echo of the input: the layers, not only the tied embedding, decide the next token.
    assert (logits.argmax(-1) == ids).float().mean() < 0.5


def test_tokenizer_roundtrip_and_chat_template(tiny_checkpoint):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    text = "Hello world! The fox 1234 jumps."
    assert tok.decode(tok(text).input_ids) == text
    assert tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_same_preset_gives_same_bytes(tmp_path):
    a = synthetic.write_checkpoint("tiny", tmp_path / "a")
    b = synthetic.write_checkpoint("tiny", tmp_path / "b")
    c = synthetic.write_checkpoint("tiny", tmp_path / "c", seed=1)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_sharding_writes_an_index(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    whole = synthetic.write_checkpoint("tiny", tmp_path / "whole")
    monkeypatch.setattr(synthetic, "SHARD_BYTES", 200_000)
    sharded = synthetic.write_checkpoint("tiny", tmp_path / "sharded")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and not (sharded / "model.safetensors").exists()
    merged = {}
    for f in files:
        merged.update(load_file(sharded / f))
    ref = load_file(whole / "model.safetensors")
    assert merged.keys() == ref.keys()
    assert all(torch.equal(merged[k], ref[k]) for k in ref)


def test_big_presets_have_the_real_shapes():
    small = synthetic.make_config("qwen3-0.6b")
    big = synthetic.make_config("qwen3-8b")
    assert (small["num_hidden_layers"], small["hidden_size"], small["intermediate_size"]) == (28, 1024, 3072)
    assert small["tie_word_embeddings"] and not big["tie_word_embeddings"]
    assert (big["num_hidden_layers"], big["hidden_size"], big["num_attention_heads"]) == (36, 4096, 32)
    assert small["vocab_size"] == big["vocab_size"] == 151936
    qwen2, llama = synthetic.make_config("qwen2.5-0.5b"), synthetic.make_config("llama-3.2-1b")
    assert (qwen2["architectures"], qwen2["hidden_size"], qwen2["num_attention_heads"]) == (
        ["Qwen2ForCausalLM"], 896, 14)
    assert (llama["architectures"], llama["vocab_size"], llama["rope_scaling"]["rope_type"]) == (
        ["LlamaForCausalLM"], 128256, "llama3")
    with pytest.raises(ValueError, match="unknown preset"):
        synthetic.make_config("qwen3-70b")


def test_cache_reuses_a_written_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITIUM_CACHE", str(tmp_path))
    first = synthetic.ensure_checkpoint("tiny")
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert synthetic.ensure_checkpoint("tiny") == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
