"""Where tritium runs: a CUDA GPU, or the CPU through Triton's interpreter.

With no CUDA device, every Triton kernel runs in Triton's interpreter. The interpreter is chosen by the
environment variable TRITON_INTERPRET, which Triton reads when it is imported, so this module must run
before anything imports triton. A value the user set is respected either way.
"""
import os
import sys
import warnings
from pathlib import Path

import torch

HAS_CUDA = torch.cuda.is_available()

if "TRITON_INTERPRET" not in os.environ and not HAS_CUDA:
    if "triton" in sys.modules:
        warnings.warn(
            "tritium: no CUDA device, but triton was imported before tritium; set TRITON_INTERPRET=1 "
            "before importing triton so kernels can run on the CPU",
            RuntimeWarning,
            stacklevel=2,
        )
    os.environ["TRITON_INTERPRET"] = "1"

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
DEVICE = torch.device("cpu") if INTERPRET else torch.device("cuda")

_announced = False


def announce_cpu_mode() -> None:
    """Tell the user once that kernels run through the (slow) interpreter."""
    global _announced
    if INTERPRET and not _announced:
        _announced = True
        print(
            "tritium: no CUDA device; running Triton kernels on the CPU through Triton's interpreter "
            "(TRITON_INTERPRET=1). This is slow and meant for development.",
            file=sys.stderr,
        )


def gpu_name() -> str:
    """A short, file-name-safe name of the GPU (e.g. 'h100', 'h200'), or 'cpu'."""
    if not HAS_CUDA:
        return "cpu"
    name = torch.cuda.get_device_name().lower()
    for known in ("h200", "h100", "a100", "l40s", "b200"):
        if known in name:
            return known
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def cache_root() -> Path:
    """tritium's cache directory (synthetic checkpoints, tuned tables): $TRITIUM_CACHE or ~/.cache/tritium."""
    return Path(os.environ.get("TRITIUM_CACHE", Path.home() / ".cache" / "tritium"))
