"""Load a Hugging Face safetensors checkpoint into a tritium model.

Handles single-file and sharded (`model.safetensors.index.json`) directories, packed projections (q/k/v ->
qkv_proj, gate/up -> gate_up_proj, via the model's `packed_modules`; each MoE expert's gate/up/down into the
experts' stacked tensors, shard id (expert, part)), tied embeddings (no `lm_head.weight`),
and the dtype from the config (`dtype` or `torch_dtype`) unless overridden. Every error names what is wrong.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from torch import nn

from tritium.model.layers import default_weight_loader
from tritium.model.moe import DOWN, GATE, UP
from tritium.model.architectures import ARCHITECTURES
from tritium.model.decoder import head_dim, model_inv_freq


def load_hf_config(model_dir: str | os.PathLike):
    path = Path(model_dir)
    if not path.is_dir():
        raise ValueError(f"model directory {str(path)!r} does not exist or is not a directory")
    if not (path / "config.json").is_file():
        raise ValueError(f"model directory {str(path)!r} has no config.json")
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(path)
    archs = getattr(cfg, "architectures", None) or []
    supported = [a for a in archs if a in ARCHITECTURES]
    if not supported:
        raise ValueError(f"unsupported architectures {archs} in {path / 'config.json'}; tritium supports "
                         f"{sorted(ARCHITECTURES)}")
    model_class(cfg).spec(cfg)  # unsupported variants (sliding window, other RoPE types) fail here, before any work
    model_inv_freq(cfg, head_dim(cfg))
    return cfg


def model_class(cfg) -> type:
    """The tritium class of the first architecture config.json names that tritium supports."""
    return ARCHITECTURES[next(a for a in cfg.architectures if a in ARCHITECTURES)]


def config_dtype(cfg, override: str | torch.dtype | None = None) -> torch.dtype:
    name = override or getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None) or "bfloat16"
    if isinstance(name, torch.dtype):
        return name
    dtype = getattr(torch, str(name).replace("torch.", ""), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"unsupported dtype {name!r}")
    return dtype


def _checkpoint_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise ValueError(f"{index} names shard files that are missing: {missing}")
        return [path / n for n in names]
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"no .safetensors weights in {str(path)!r}")
    return files


# one expert's tensor of a MoE block: experts.<e>.<part>.weight -> (parameter name, (e, part))
_EXPERT = re.compile(r"\.experts\.(\d+)\.(gate_proj|up_proj|down_proj|w1|w3|w2)\.weight$")
_EXPERT_PART = {"gate_proj": GATE, "w1": GATE, "up_proj": UP, "w3": UP, "down_proj": DOWN, "w2": DOWN}


def _target(name: str, packed: dict, renamed: dict) -> tuple[str, object]:
    """The parameter a checkpoint tensor loads into, and its shard id (None: the whole parameter)."""
    for old, new in renamed.items():
        name = name.replace(f".{old}.", f".{new}.")
    m = _EXPERT.search(name)
    if m:
        part = _EXPERT_PART[m.group(2)]
        param = "down_proj" if part == DOWN else "gate_up_proj"
        return f"{name[:m.start()]}.experts.{param}", (int(m.group(1)), part)
    for ckpt_part, (param_part, sid) in packed.items():
        if f".{ckpt_part}." in name:
            return name.replace(ckpt_part, param_part), sid
    return name, None


def load_weights(model: nn.Module, model_dir: str | os.PathLike) -> None:
    """Copy every checkpoint tensor into its parameter (through the parameter's weight_loader)."""
    from safetensors import safe_open

    params = dict(model.named_parameters(remove_duplicate=False))
    packed = getattr(model, "packed_modules", {})
    renamed = getattr(model, "renamed_modules", {})
    loaded: dict[int, set] = {}  # id(param) -> shard ids loaded into it (None for an unpacked tensor)
    for file in _checkpoint_files(Path(model_dir)):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                target, shard_id = _target(name, packed, renamed)
                if target not in params:
                    raise ValueError(f"unexpected tensor {name!r} in {file.name}: the model has no such parameter")
                param = params[target]
                loader = getattr(param, "weight_loader", default_weight_loader)
                args = (f.get_tensor(name),) if shard_id is None else (f.get_tensor(name), shard_id)
                try:
                    loader(param, *args)
                except ValueError as e:
                    raise ValueError(f"tensor {name!r} in {file.name}: {e}") from None
                loaded.setdefault(id(param), set()).add(shard_id)
    # A tied parameter (lm_head = embed_tokens) is one object: loading it under either name counts.
    missing = []
    for name, param in params.items():
        needed = getattr(param, "shard_ids", None) or {sid for p, sid in packed.values() if f".{p}." in name}
        got = loaded.get(id(param), set())
        if not ((needed or {None}) <= got or None in got):  # None: the whole tensor, every part at once
            missing.append(name)
    if missing:
        raise ValueError(f"checkpoint is missing tensors for parameters: {missing[:8]}"
                         + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""))


def load_model(model_dir: str | os.PathLike, device: torch.device | str = "cpu",
               dtype: str | torch.dtype | None = None) -> nn.Module:
    """Build the architecture named in config.json on `device` and load its weights."""
    cfg = load_hf_config(model_dir)
    target_dtype = config_dtype(cfg, dtype)
    default = torch.get_default_dtype()
    try:
        torch.set_default_dtype(target_dtype)
        with torch.device(device):
            model = model_class(cfg)(cfg)
    finally:
        torch.set_default_dtype(default)
    load_weights(model, model_dir)
    return model.eval()
