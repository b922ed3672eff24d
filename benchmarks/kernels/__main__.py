"""Run every kernel microbenchmark: `python -m benchmarks.kernels [name ...]` (on a GPU).

Each module benchmarks/kernels/bench_<name>.py exposes `run(ceilings) -> list[Row]`.
"""
import importlib
import pkgutil
import sys
from pathlib import Path

import torch

import tritium  # noqa: F401
from benchmarks.kernels import harness


def main(argv):
    if not torch.cuda.is_available():
        sys.exit("the kernel benchmarks need a CUDA GPU")
    here = [str(Path(__file__).parent)]
    names = argv or sorted(m.name[6:] for m in pkgutil.iter_modules(here) if m.name.startswith("bench_"))
    ceilings = harness.measure_ceilings()
    for name in names:
        module = importlib.import_module(f"benchmarks.kernels.bench_{name}")
        rows = module.run(ceilings)
        path = harness.report(rows, ceilings, name)
        print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
