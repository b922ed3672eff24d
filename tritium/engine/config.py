"""Engine configuration: one frozen, validated dataclass.

Fields and defaults follow Nano-vLLM, plus prefix caching, a dtype override and a seed. Every field is checked in ``__post_init__`` and a bad value raises ``ValueError`` naming the field.
``EngineConfig.from_kwargs(model, **kwargs)`` is the entry point for user keywords (``LLM(model, **kw)``):
an unknown keyword is an error that lists the valid ones, never silently dropped.

Capping ``max_model_len`` by the model's context (``max_position_embeddings``; Mistral's sliding window too)
and sizing the KV cache when ``num_kvcache_blocks == -1`` happen where the model is known; use
``dataclasses.replace(cfg, ...)`` to get an updated copy (validation runs again).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from tritium.engine.sampling_params import is_int

# Accepted spellings of the dtype override -> canonical torch attribute name.
_DTYPES = {
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float32": "float32", "fp32": "float32", "float": "float32",
}


PIECEWISE_GRAPH_TOKENS = 8192  # default largest step replayed from piecewise graphs


def _check_int(name: str, value, minimum: int) -> None:
    if not is_int(value):
        raise ValueError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


@dataclass(frozen=True)
class EngineConfig:
    """Settings of one engine instance.

    model: path of an HF-format checkpoint directory.
    max_num_batched_tokens: token budget of one step, decode rows and prefill chunks together (longer
        prompts are chunked over steps); also caps the number of sequences decoded per step.
    max_num_seqs: most sequences running (holding KV blocks) at once.
    max_model_len: longest sequence (prompt + completion), capped by the model's positions.
    gpu_memory_utilization: fraction of the GPU's memory the engine may use in total (KV cache sizing).
    tensor_parallel_size: number of GPUs the model is split over.
    enforce_eager: True disables CUDA graphs.
    piecewise_graph_tokens: prefill and mixed steps up to this many tokens replay CUDA graphs of the forward's
        pieces between attention calls (captured per token bucket at start-up); 0 runs them eagerly.
    kvcache_block_size: tokens per KV block; a power of two in [16, 256].
    num_kvcache_blocks: KV blocks to allocate; -1 sizes the cache from free memory.
    enable_prefix_caching: reuse KV blocks of identical prompt prefixes across requests.
    dtype: None keeps the checkpoint's dtype; else "bfloat16" / "float16" / "float32" (aliases bf16,
        fp16, half, fp32, float, "auto" (= None) and torch dtypes accepted, normalised to the name).
    seed: seeds the generator that draws a sampling seed for every request that brings none.
    """

    model: str
    max_num_batched_tokens: int = 16384
    max_num_seqs: int = 512
    max_model_len: int = 4096
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    enforce_eager: bool = False
    piecewise_graph_tokens: int = PIECEWISE_GRAPH_TOKENS
    kvcache_block_size: int = 256
    num_kvcache_blocks: int = -1
    enable_prefix_caching: bool = True
    dtype: str | None = None
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a non-empty path string, got {self.model!r}")
        _check_int("max_num_batched_tokens", self.max_num_batched_tokens, 1)
        _check_int("max_num_seqs", self.max_num_seqs, 1)
        _check_int("max_model_len", self.max_model_len, 1)
        _check_int("tensor_parallel_size", self.tensor_parallel_size, 1)
        _check_int("seed", self.seed, 0)
        _check_int("piecewise_graph_tokens", self.piecewise_graph_tokens, 0)
        u = self.gpu_memory_utilization
        if isinstance(u, bool) or not isinstance(u, (int, float)) or not (0.0 < u <= 1.0):
            raise ValueError(f"gpu_memory_utilization must be a number in (0, 1], got {u!r}")
        _check_bool("enforce_eager", self.enforce_eager)
        _check_bool("enable_prefix_caching", self.enable_prefix_caching)
        bs = self.kvcache_block_size
        if not is_int(bs) or not (16 <= bs <= 256) or bs & (bs - 1):
            raise ValueError(f"kvcache_block_size must be a power of two in [16, 256], got {bs!r}")
        n = self.num_kvcache_blocks
        if not is_int(n) or not (n == -1 or n >= 1):
            raise ValueError(f"num_kvcache_blocks must be -1 (size from free memory) or >= 1, got {n!r}")
        if self.dtype is not None:
            # a torch.dtype is accepted too: str(torch.bfloat16) == "torch.bfloat16"
            key = str(self.dtype).lower().removeprefix("torch.")
            if key == "auto":
                object.__setattr__(self, "dtype", None)  # frozen: normalise in place once
            elif key in _DTYPES:
                object.__setattr__(self, "dtype", _DTYPES[key])
            else:
                raise ValueError(
                    f"dtype must be None, 'auto' or one of {sorted(set(_DTYPES.values()))} "
                    f"(aliases {sorted(k for k in _DTYPES if k not in _DTYPES.values())}), got {self.dtype!r}"
                )

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_kwargs(cls, model: str, **kwargs) -> "EngineConfig":
        """Build a config from user keywords; an unknown keyword raises ValueError listing the valid ones."""
        valid = [n for n in cls.field_names() if n != "model"]
        unknown = sorted(k for k in kwargs if k not in valid)
        if unknown:
            raise ValueError(
                f"unknown engine option(s): {', '.join(unknown)}; valid options are: {', '.join(valid)}"
            )
        return cls(model=model, **kwargs)

    def max_blocks_per_seq(self) -> int:
        """KV blocks a sequence of ``max_model_len`` tokens spans (block-table width)."""
        return math.ceil(self.max_model_len / self.kvcache_block_size)
