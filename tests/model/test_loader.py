"""The safetensors loader: sharded == single file, and every error says what is wrong."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tritium.model import synthetic
from tritium.model.loader import load_model


def _params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_sharded_and_single_file_give_identical_weights(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "SHARD_BYTES", 300_000)
    sharded = synthetic.write_checkpoint("tiny", tmp_path / "sharded")
    assert (sharded / "model.safetensors.index.json").exists()
    a, b = _params(load_model(tiny_checkpoint)), _params(load_model(sharded))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The packed qkv holds q, k, v in order; the tied head is the embedding.
    raw = load_file(tiny_checkpoint / "model.safetensors")
    qkv = a["model.layers.1.self_attn.qkv_proj.weight"]
    names = [f"model.layers.1.self_attn.{p}_proj.weight" for p in "qkv"]
    assert torch.equal(qkv, torch.cat([raw[n] for n in names]))
    assert torch.equal(a["lm_head.weight"], raw["model.embed_tokens.weight"])


def test_dtype_from_config_unless_overridden(tiny_checkpoint):
    assert load_model(tiny_checkpoint).model.embed_tokens.weight.dtype == torch.float32
    assert load_model(tiny_checkpoint, dtype="float16").model.embed_tokens.weight.dtype == torch.float16


def test_missing_directory(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_model(tmp_path / "nope")


def test_unsupported_architecture(tiny_checkpoint, tmp_path):
    path = _copy(tiny_checkpoint, tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    cfg["architectures"] = ["MambaForCausalLM"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unsupported architectures.*Mamba"):
        load_model(path)


def _edit_weights(path, fn):
    tensors = load_file(path / "model.safetensors")
    fn(tensors)
    save_file(tensors, str(path / "model.safetensors"))


def test_missing_tensor(tiny_checkpoint, tmp_path):
    path = _copy(tiny_checkpoint, tmp_path / "m")
    _edit_weights(path, lambda t: t.pop("model.layers.0.self_attn.k_proj.weight"))
    with pytest.raises(ValueError, match="missing tensors.*layers.0.self_attn.qkv_proj"):
        load_model(path)


def test_unexpected_tensor(tiny_checkpoint, tmp_path):
    path = _copy(tiny_checkpoint, tmp_path / "m")
    _edit_weights(path, lambda t: t.update({"model.layers.0.extra.weight": torch.ones(3)}))
    with pytest.raises(ValueError, match="unexpected tensor 'model.layers.0.extra.weight'"):
        load_model(path)


def test_shape_mismatch(tiny_checkpoint, tmp_path):
    path = _copy(tiny_checkpoint, tmp_path / "m")
    name = "model.layers.1.mlp.down_proj.weight"
    _edit_weights(path, lambda t: t.update({name: t[name][:, :-1].contiguous()}))
    with pytest.raises(ValueError, match=f"{name}.*shape mismatch"):
        load_model(path)
    name = "model.layers.0.self_attn.v_proj.weight"
    path = _copy(tiny_checkpoint, tmp_path / "m2")
    _edit_weights(path, lambda t: t.update({name: t[name][:-1].contiguous()}))
    with pytest.raises(ValueError, match=f"{name}.*shape mismatch"):
        load_model(path)


def test_moe_experts_missing_or_unknown(tmp_path):
    moe = synthetic.ensure_checkpoint("qwen3-moe-tiny")
    path = _copy(moe, tmp_path / "m")
    _edit_weights(path, lambda t: t.pop("model.layers.0.mlp.experts.5.up_proj.weight"))
    with pytest.raises(ValueError, match="missing tensors.*layers.0.mlp.experts.gate_up_proj"):
        load_model(path)
    path = _copy(moe, tmp_path / "m2")
    name = "model.layers.0.mlp.experts.8.down_proj.weight"  # the preset has experts 0-7
    _edit_weights(path, lambda t: t.update({name: t["model.layers.0.mlp.experts.7.down_proj.weight"].clone()}))
    with pytest.raises(ValueError, match=f"{name}.*unknown expert shard"):
        load_model(path)
    path = _copy(moe, tmp_path / "m3")
    name = "model.layers.0.mlp.experts.2.gate_proj.weight"
    _edit_weights(path, lambda t: t.update({name: t[name][:-1].contiguous()}))
    with pytest.raises(ValueError, match=f"{name}.*expert 2 gate_proj"):
        load_model(path)


def test_packed_checkpoint_tensor_of_the_wrong_size(tmp_path):
    path = _copy(synthetic.ensure_checkpoint("phi3-tiny"), tmp_path / "m")
    name = "model.layers.0.self_attn.qkv_proj.weight"  # q | k | v in one tensor
    _edit_weights(path, lambda t: t.update({name: t[name][:-8].contiguous()}))
    with pytest.raises(ValueError, match=f"{name}.*shape mismatch.*expected 256 rows"):
        load_model(path)
