"""A thin layer over `triton.autotune` that every kernel uses for its CONFIGS.

- On the GPU the kernel is tuned over all of CONFIGS on first use of each key (bucketed sizes), as
  triton.autotune does. Tuning synchronizes, so it must happen before CUDA-graph capture: run each shape
  bucket once eagerly first.
- Each trial is timed replayed inside a CUDA graph (`graph_bench`), back to back as the model's graphs run
  kernels: triton's default do_bench times one isolated call between CUDA events (plus the host's launch
  time whenever it outlasts the L2 flush before it), which swamps the differences between configs of 1-3 us
  kernels. The graph does not flush L2: inputs smaller than it are timed warm.
- In-place kernels name their written arguments in `tune_on_copies`: the first launch of an untuned key
  runs the tuner's trials on copies of them (same strides), so trials never touch the caller's tensors and
  no clone/restore is timed; the real launch then reuses the winner.
- Streaming kernels (row kernels) name the tensors they stream in `rotate`: their trials cycle over enough
  copies of them to pass the L2 cache, so each call reads what earlier calls evicted, as a model's layers
  and the benchmarks do (and as Inductor's flush-per-call timing does). Timed warm, a 4096 x 1024
  add_rms_norm ran all configs from L2 and the tuner picked ROWS=1 in half the runs: 9.1 us from memory,
  where ROWS=2 ran 8.6 (H200). Every config is compiled before any is timed, and all are timed twice in
  turn, each keeping its best (the first graph timing after a pause for compiling ran up to 12% slow).
- Named kernels (`tuned(name=...)`) start with the choices of tritium/autotune/tables/<gpu>.json in their
  tuner's cache (tables.py; written by `python -m tritium.autotune`), so only keys the table lacks are
  tuned at run time.
- Under Triton's interpreter, autotuning with several configs crashes, so a single config runs:
  `interpret_config` when the kernel names one (the interpreter's cost is per program and per op, so it wants
  few, wide programs, unlike the GPU), else CONFIGS[0].
- Any launch can name an explicit config (`config=`), bypassing the tuner: tests use it to check every
  config in CONFIGS, not only the winner.
- `heuristics` (triton.heuristics values: name -> fn(args)) derive constexprs from the arguments and the
  chosen config (e.g. EVEN_ROWS = n_rows % ROWS == 0), on tuned and explicit-config launches alike.

PDL (programmatic dependent launch, Hopper on): the decode step's kernels (few-row projections, RoPE + KV
store, decode attention and its merge) launch with `pdl_launch()`, so each may start while the kernel before
it finishes, and call gdc_wait before touching anything another kernel wrote or reads. The wait at every
program's start keeps the stream's order (a kernel's end implies the end of the one before it); what they
gain is the launch gap, and the few-row projection streams its first weight chunk in before the wait.
Off by default until measured: TRITIUM_PDL=1 turns it on (Hopper and newer). tests/kernels/test_pdl.py checks
a decode chain replayed from a graph with it against the eager chain without it; `TRITIUM_PDL=0|1 python
benchmarks/latency.py` measures it.

SPECIALIZATION: Triton compiles a variant per value class of each int argument (== 1, % 16 == 0, other)
and per 16-byte alignment of each pointer. Start-up warms up one step per size bucket, so a variant must be
fixed by the bucket alone: kernels mark their per-step sizes `do_not_specialize` (tokens, rows) and the index
vectors they take as slices of packed per-step tensors `do_not_specialize_on_alignment` (positions, seq
lens, seeds, ...). Data tensors (activations, logits, KV) keep both: they are aligned and their sizes fixed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import itertools
import math
import os

import torch
import triton
import triton.language as tl

from tritium.autotune import compiles, tables
from tritium.platform import INTERPRET, gpu_name

compiles.install()

ROTATE_BYTES = 128 << 20  # what `rotate` trials cycle through: over twice the 50-60 MB L2 of an H100 / H200
MAX_SETS = 8
TUNE_ROUNDS = 2  # rotated trials: every config timed this many times in turn, keeping its best
_CONFIG_FAILURES = (triton.runtime.errors.OutOfResources, triton.runtime.errors.PTXASError,
                    triton.compiler.errors.CompileTimeAssertionFailure)


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1): the bucket used in autotune keys."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


PDL = not INTERPRET and os.environ.get("TRITIUM_PDL", "0") not in ("", "0")  # off by default (module doc)
_hopper: dict = {}


def pdl_launch() -> dict:
    """Launch options of a kernel that supports programmatic dependent launch (its PDL constexpr waits for
    the kernel before with gdc_wait): PDL=True plus Triton's launch flag when PDL is on and the GPU is a
    Hopper or newer (griddepcontrol needs sm_90); PDL=False otherwise."""
    if not PDL:
        return {"PDL": False}
    device = torch.cuda.current_device()
    if device not in _hopper:
        _hopper[device] = torch.cuda.get_device_capability(device) >= (9, 0)
    return {"PDL": True, "launch_pdl": True} if _hopper[device] else {"PDL": False}


def rotation_sets(set_bytes: float, total_bytes: int, max_sets: int) -> int:
    """How many copies of a set of `set_bytes` a cycle needs to move `total_bytes` (1 to max_sets)."""
    return max(1, min(max_sets, math.ceil(total_bytes / max(set_bytes, 1))))


def needs_int64(*views) -> bool:
    """True when an element offset a row kernel may form can pass 2^31 for one of `views` ((shape, strides)
    pairs, last dim contiguous): up to 512 padded rows past the end of every leading dim and a power-of-two
    tile past the last column. Otherwise 32-bit index math is exact, and cheaper than 64-bit."""
    for shape, strides in views:
        bound = next_pow2(shape[-1]) + sum((n + 512) * abs(s) for n, s in zip(shape[:-1], strides[:-1]))
        if bound >= 2**31:
            return True
    return False


def flat_launch(n_elems: int, config, interpret_config: triton.Config, *views) -> tuple:
    """(config, OFFS_64) for a flat 1-D kernel whose programs take XBLOCK of n_elems elements each.
    config: as given; under the interpreter without one, interpret_config with XBLOCK cut to
    next_pow2(n_elems) (few, wide programs, as the interpreter's cost is per program and per op).
    OFFS_64: 64-bit index math when the flat index (i < n_elems + XBLOCK, interpret_config's XBLOCK being the
    widest; a wrapped i would pass the mask) or an offset into one of `views` (needs_int64) can pass 2^31."""
    if config is None and INTERPRET:
        xblock = min(interpret_config.kwargs["XBLOCK"], next_pow2(n_elems))
        config = triton.Config({"XBLOCK": xblock}, num_warps=interpret_config.num_warps)
    return config, n_elems + interpret_config.kwargs["XBLOCK"] >= 2**31 or needs_int64(*views)


@triton.jit
def tile_mask(rows, cols, n_rows, n_cols, EVEN_ROWS: tl.constexpr, EVEN_N: tl.constexpr):
    """[rows, cols] bounds mask of a 2-D tile that is not full (EVEN_ROWS / EVEN_N heuristics: at least one
    false): only the bounds that can fail are tested. Full tiles load and store with no mask at all."""
    if EVEN_N:
        mask = (rows < n_rows)[:, None]
    elif EVEN_ROWS:
        mask = (cols < n_cols)[None, :]
    else:
        mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    return mask


@triton.jit
def pdl_wait(PDL: tl.constexpr):
    """A PDL kernel's first step (pdl_launch): wait until the kernel before it has finished and its writes are
    visible, then let the kernel after it launch (it waits in turn)."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


def graph_bench(kernel_call, quantiles):
    """The autotuner's timer: device time of `kernel_call` replayed in a CUDA graph, as triton's do_bench
    returns it for `quantiles`; plain do_bench where capture fails (a compile error re-raises from there)."""
    from triton import testing

    try:
        torch.cuda.synchronize()  # the graph runs on a side stream: let the inputs' producers finish first
        return testing.do_bench_cudagraph(kernel_call, rep=10, quantiles=quantiles)
    except Exception:
        return testing.do_bench(kernel_call, quantiles=quantiles)


def tuning_key(arg_names, keys, args, kwargs) -> tuple:
    """The key triton's Autotuner.run caches a choice under: the `keys` arguments' values, then the dtype
    of every argument that has one, in argument order (mirrors triton 3.6 Autotuner.run)."""
    named = {k: v for k, v in {**dict(zip(arg_names, args)), **kwargs}.items() if k in arg_names}
    dtypes = [str(v.dtype) for v in named.values() if hasattr(v, "dtype")]
    return tuple([named[k] for k in keys if k in named] + dtypes)


def with_copies(arg_names, names, args, kwargs):
    """(args, kwargs) with the tensors named in `names` replaced by copies of the same shape, strides and
    values (a strided view's copy keeps its strides, as the kernel gets them separately); one tensor
    passed twice gets one copy, so aliasing is kept."""
    copies = {}

    def copy(name, v):
        if name not in names or not isinstance(v, torch.Tensor):
            return v
        if id(v) not in copies:
            copies[id(v)] = torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, device=v.device).copy_(v)
        return copies[id(v)]

    return [copy(n, v) for n, v in zip(arg_names, args)] + list(args[len(arg_names):]), {
        n: copy(n, v) for n, v in kwargs.items()}


@dataclass
class TunedKernel:
    """A @triton.jit function (wrapped in its triton.heuristics, if any), its config space, the autotuner
    built over it, and the written arguments to tune on copies."""

    fn: triton.runtime.KernelInterface
    configs: list
    tuner: triton.runtime.Autotuner
    tune_on_copies: tuple = ()
    rotate: tuple = ()
    name: str = ""  # its entry in the per-GPU tables (tables.py); unnamed kernels have none
    seeded: bool = False  # the table's choices are in tuner.cache

    def __call__(self, grid, *args, config: triton.Config | None = None, **kwargs):
        """Launch over `grid` (a tuple, or a callable of the meta-parameters) with the tuned config, or
        with `config` when given."""
        if config is None:
            t = self.tuner
            if not self.seeded:
                if self.name and not INTERPRET:
                    tables.seed_all(gpu_name())  # every registered kernel, this one included
                self.seeded = True
            if (self.tune_on_copies or self.rotate) and len(t.configs) > 1 and self._untuned(args, kwargs):
                if self.rotate:
                    self._tune_rotated(grid, args, kwargs)
                else:
                    cargs, ckwargs = with_copies(t.arg_names, self.tune_on_copies, args, kwargs)
                    t[grid](*cargs, **ckwargs)  # tunes this key; trials and this launch write the copies only
            return t[grid](*args, **kwargs)
        meta = dict(config.kwargs)
        if callable(grid):
            grid = grid(meta)
        return self.fn[grid](*args, **kwargs, **config.all_kwargs())

    def _untuned(self, args, kwargs) -> bool:
        return tuning_key(self.tuner.arg_names, self.tuner.keys, args, kwargs) not in self.tuner.cache

    def _tune_rotated(self, grid, args, kwargs) -> None:
        """Time every config on calls cycling over copies of the `rotate` (and `tune_on_copies`) tensors,
        and cache the fastest under this call's key, where triton's tuner looks it up."""
        t = self.tuner
        named = {**dict(zip(t.arg_names, args)), **kwargs}
        rotated = {id(v): v for n, v in named.items() if n in self.rotate and isinstance(v, torch.Tensor)}
        per_set = sum(v.numel() * v.element_size() for v in rotated.values())
        n_sets = rotation_sets(per_set, ROTATE_BYTES, MAX_SETS)
        # The first set is the caller's own tensors, but for those trials must not write (tune_on_copies):
        # a set of copies past the L2 would only add memory at warm-up.
        sets = [with_copies(t.arg_names, self.tune_on_copies, args, kwargs)]
        names = (*self.rotate, *self.tune_on_copies)
        sets += [with_copies(t.arg_names, names, args, kwargs) for _ in range(n_sets - 1)]
        timings, error = {}, None
        for config in t.configs:  # compile them all first
            try:
                self(grid, *sets[0][0], config=config, **sets[0][1])
            except _CONFIG_FAILURES as e:  # as triton's tuner: this config cannot run here
                timings[config], error = math.inf, e
        for _ in range(TUNE_ROUNDS):
            for config in t.configs:
                if timings.get(config) == math.inf:
                    continue
                cycle = itertools.cycle(sets)

                def call(config=config, cycle=cycle):
                    a, kw = next(cycle)
                    self(grid, *a, config=config, **kw)

                # the median (triton's timers return a bare float for a single quantile)
                ms = graph_bench(call, quantiles=(0.5, 0.2, 0.8))[0]
                timings[config] = min(ms, timings.get(config, ms))
        best = min(timings, key=timings.get)
        if timings[best] == math.inf:
            raise error
        t.cache[tuning_key(t.arg_names, t.keys, args, kwargs)] = best


def tuned(
    fn,
    configs: Sequence[triton.Config],
    key: Sequence[str],
    restore_value: Sequence[str] = (),
    reset_to_zero: Sequence[str] = (),
    interpret_config: triton.Config | None = None,
    tune_on_copies: Sequence[str] = (),
    heuristics: dict | None = None,
    rotate: Sequence[str] = (),
    name: str = "",
) -> TunedKernel:
    """Wrap a jitted kernel with its autotune space. `tune_on_copies` names arguments the kernel writes
    that tuning trials must not touch (in-place outputs): an untuned key is first tuned on copies of them.
    `restore_value` names in-place arguments that tuning must restore between trials (the restore is timed
    with every trial: prefer tune_on_copies); `reset_to_zero` names accumulators that must start at zero.
    `heuristics` wraps fn in triton.heuristics under the tuner, so each value sees the config's kwargs.
    `rotate` names the tensors a streaming kernel reads / writes once per call: trials cycle over copies
    of them (tuned by `_tune_rotated`, not triton's timer). `name`: the kernel's entry in the per-GPU tables
    of tuned choices (tables.py), unique; an unnamed kernel always tunes at run time."""
    configs = list(configs)
    if heuristics:
        fn = triton.heuristics(dict(heuristics))(fn)
    if len(configs) < 1:
        raise ValueError("a kernel needs at least one config")
    space = [interpret_config or configs[0]] if INTERPRET else configs
    tuner = triton.autotune(
        configs=space,
        key=list(key),
        restore_value=list(restore_value) or None,
        reset_to_zero=list(reset_to_zero) or None,
        do_bench=None if INTERPRET else graph_bench,
    )(fn)
    kernel = TunedKernel(fn=fn, configs=configs, tuner=tuner, tune_on_copies=tuple(tune_on_copies),
                         rotate=tuple(rotate), name=name)
    if name:
        if name in tables.KERNELS:
            raise ValueError(f"a tuned kernel named {name!r} exists already")
        tables.KERNELS[name] = kernel
    return kernel


def config_id(config: triton.Config) -> str:
    """A readable id for a config (used to name parametrized tests)."""
    parts = [f"{k}{v}" for k, v in sorted(config.kwargs.items())]
    parts.append(f"w{config.num_warps}s{config.num_stages}")
    return "-".join(parts)


