"""A thin layer over `triton.autotune` that every kernel uses for its CONFIGS.

- On the GPU the kernel is tuned over all of CONFIGS on first use of each key (bucketed sizes), as
  triton.autotune does. Tuning synchronizes, so it must happen before CUDA-graph capture: run each shape
  bucket once eagerly first.
- Under Triton's interpreter, autotuning with several configs crashes, so a single config runs:
  `interpret_config` when the kernel names one (the interpreter's cost is per program and per op, so it wants
  few, wide programs, unlike the GPU), else CONFIGS[0].
- Any launch can name an explicit config (`config=`), bypassing the tuner: tests use it to check every
  config in CONFIGS, not only the winner.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import triton

from tritium.platform import INTERPRET


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1): the bucket used in autotune keys."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


@dataclass
class TunedKernel:
    """A @triton.jit function, its config space, and the autotuner built over it."""

    fn: triton.runtime.JITFunction
    configs: list
    tuner: triton.runtime.Autotuner

    def __call__(self, grid, *args, config: triton.Config | None = None, **kwargs):
        """Launch over `grid` (a tuple, or a callable of the meta-parameters) with the tuned config, or
        with `config` when given."""
        if config is None:
            return self.tuner[grid](*args, **kwargs)
        meta = dict(config.kwargs)
        if callable(grid):
            grid = grid(meta)
        return self.fn[grid](*args, **kwargs, **config.all_kwargs())


def tuned(
    fn,
    configs: Sequence[triton.Config],
    key: Sequence[str],
    restore_value: Sequence[str] = (),
    reset_to_zero: Sequence[str] = (),
    interpret_config: triton.Config | None = None,
) -> TunedKernel:
    """Wrap a jitted kernel with its autotune space. `restore_value` names in-place arguments that tuning
    must restore between trials; `reset_to_zero` names accumulators that must start at zero."""
    configs = list(configs)
    if len(configs) < 1:
        raise ValueError("a kernel needs at least one config")
    space = [interpret_config or configs[0]] if INTERPRET else configs
    tuner = triton.autotune(
        configs=space,
        key=list(key),
        restore_value=list(restore_value) or None,
        reset_to_zero=list(reset_to_zero) or None,
    )(fn)
    return TunedKernel(fn=fn, configs=configs, tuner=tuner)


def config_id(config: triton.Config) -> str:
    """A readable id for a config (used to name parametrized tests)."""
    parts = [f"{k}{v}" for k, v in sorted(config.kwargs.items())]
    parts.append(f"w{config.num_warps}s{config.num_stages}")
    return "-".join(parts)


