"""Per-GPU tables of tuned configs: the package's tables/<gpu>.json (written by `python -m tritium.autotune`,
shipped as defaults) under the user's <cache>/tables/<gpu>.json (cache: $TRITIUM_CACHE or ~/.cache/tritium),
where an engine saves what its start-up had to tune. A key in both takes the user's entry.

Tuning on first use costs 0.1-0.3 s per key (every config timed twice in CUDA graphs), and a model meets
dozens of keys: on an H200 the engine's start-up timed 716 trials (46 s) and the first reference bench run
another 37 (10.5 s of its 18.3). A table holds the winners of an earlier run on the same kind of GPU, so
each kernel starts with them in its tuner's cache and tunes only keys the table lacks.

Format: {"gpu": ..., "triton": ..., "kernels": {kernel name: {repr(key): {"kwargs", "num_warps",
"num_stages"}}}}. A key is the tuple triton's Autotuner caches under (tuning_key). An entry whose config is
no longer in the kernel's CONFIGS is ignored (that key tunes again). TRITIUM_TUNE_TABLES=0 ignores tables.
"""
from __future__ import annotations

import ast
import json
import os
import warnings
from pathlib import Path

import triton

TABLES = Path(__file__).resolve().parent / "tables"
KERNELS: dict = {}  # kernel name -> TunedKernel, filled by tuned()


def enabled() -> bool:
    return os.environ.get("TRITIUM_TUNE_TABLES", "1").strip().lower() not in ("", "0", "false", "no", "off")


def table_path(gpu: str, directory: Path | None = None) -> Path:
    """The package's table (or the one in `directory`)."""
    return (TABLES if directory is None else Path(directory)) / f"{gpu}.json"


def user_dir() -> Path:
    from tritium.platform import cache_root

    return cache_root() / "tables"


def config_entry(config: triton.Config) -> dict:
    return {"kwargs": dict(config.kwargs), "num_warps": config.num_warps, "num_stages": config.num_stages}


def find_config(configs, entry: dict):
    """The config of `configs` that `entry` describes, or None."""
    for c in configs:
        if config_entry(c) == entry:
            return c
    return None


def entries(kernels: dict, known: dict | None = None) -> dict:
    """{kernel name: {repr(key): entry}} of every tuned choice the kernels' tuners hold, less those `known`
    (a table's kernels part) already holds."""
    known = known or {}
    out = {}
    for name, kernel in sorted(kernels.items()):
        have = known.get(name, {})
        choices = {repr(k): config_entry(c) for k, c in kernel.tuner.cache.items()}
        choices = {k: e for k, e in choices.items() if have.get(k) != e}
        if choices:
            out[name] = choices
    return out


def seed(kernel, table: dict) -> None:
    """Put the table's choices for `kernel` (a TunedKernel) into its tuner's cache, keeping keys it already
    holds."""
    for text, entry in table.get(kernel.name, {}).items():
        config = find_config(kernel.configs, entry)
        try:
            key = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            continue  # not a key this module wrote: that key tunes at run time
        if config is not None and key not in kernel.tuner.cache:
            kernel.tuner.cache[key] = config


def seed_all(gpu: str) -> None:
    """Seed every registered kernel not yet seeded (all at once, so the keys the tuners hold after the first
    launch are the table's plus what was tuned since: see held_keys)."""
    table = load(gpu)
    for kernel in KERNELS.values():
        if not kernel.seeded:
            kernel.seeded = True
            seed(kernel, table)


def held_keys() -> int:
    """Keys the named kernels' tuners hold: tuned in this process, or seeded from a table (every registered
    kernel is seeded at the first launch of any)."""
    return sum(len(k.tuner.cache) for k in KERNELS.values())


def active_tables(gpu: str) -> list[Path]:
    """The table files a kernel on this GPU starts from, defaults first ([] when tables are off)."""
    if not enabled():
        return []
    return [p for p in (table_path(gpu), table_path(gpu, user_dir())) if p.exists()]


_loaded: dict = {}


def _read(path: Path) -> dict:
    """The kernels part of a table file; {} with a warning when it cannot be read (kernels then tune)."""
    try:
        kernels = json.loads(path.read_text())["kernels"]
        if not isinstance(kernels, dict):
            raise TypeError(f"'kernels' is a {type(kernels).__name__}")
        return kernels
    except (OSError, ValueError, KeyError, TypeError) as e:
        warnings.warn(f"tritium: ignoring the tuning table {path} ({type(e).__name__}: {e})", RuntimeWarning,
                      stacklevel=3)
        return {}


def load(gpu: str) -> dict:
    """The kernels part of the GPU's tables merged ({} when there are none, or tables are off), read once."""
    if gpu not in _loaded:
        merged: dict = {}
        for path in active_tables(gpu):
            for name, choices in _read(path).items():
                if isinstance(choices, dict):
                    merged.setdefault(name, {}).update(choices)
        _loaded[gpu] = merged
    return _loaded[gpu]


def save(gpu: str, directory: Path | None = None, only_new: bool = False) -> Path:
    """Merge the registered kernels' tuned choices into <directory>/<gpu>.json (default: the package's table;
    this run's choice wins a shared key); `only_new`: just those the loaded tables lack. The file is replaced
    whole (written beside it, then renamed), so a reader never sees half of it."""
    path = table_path(gpu, directory)
    merged = _read(path) if path.exists() else {}
    for name, choices in entries(KERNELS, load(gpu) if only_new else None).items():
        merged.setdefault(name, {}).update(choices)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"gpu": gpu, "triton": triton.__version__, "kernels": merged}
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    _loaded.pop(gpu, None)
    return path
