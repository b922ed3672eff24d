"""Per-kernel times of top-p sampling by the number of rows the candidate window leaves pending (torch.profiler).
`python benchmarks/profile_sampling.py [--batch 256] [--dtype fp32] [--pending 0,1,2] [--set MODULE.NAME=VALUE ...]`

The top-p time at a batch depends on how many rows pass the candidate window (sampling/filtered.py) to the
bracket rounds (sampling/bracket.py). This finds inputs of the benchmark's kind (bench_sampling._logits: a normal
bulk and a few strong tokens per row) with each asked-for pending count, then prints each kernel's device time
in launch order and their sum (the fastest of a few calls). --set overrides, before the run, a constant that
a launcher in tritium.kernels reads (not a jit global), e.g. --set sampling.bracket.COOPERATIVE=0 (one launch
per bracket stage) or --set sampling.bracket.NPROBES=16: variants compare on one card.
"""
import argparse
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from benchmarks.kernels.bench_sampling import VOCAB, _logits, _pending  # noqa: E402
from tritium.kernels.sampling import sample  # noqa: E402

CALLS = 5
SEARCH = 400  # seeds tried per pending count


def apply_overrides(settings):
    for item in settings:
        name, value = item.split("=", 1)
        module, attr = name.rsplit(".", 1)
        mod = importlib.import_module(f"tritium.kernels.{module}")
        if not hasattr(mod, attr):
            sys.exit(f"--set {item}: tritium.kernels.{module} has no {attr}")
        current = getattr(mod, attr)
        setattr(mod, attr, int(value) if current is None else type(current)(value))  # None: an int option


def find_inputs(b, dtype, wanted, t, seeds, offs, p):
    """{pending count: logits} for the wanted counts, from seeded draws of the benchmark's logits."""
    found = {}
    for seed in range(SEARCH):
        torch.manual_seed(seed)
        x = _logits(b, dtype, "top-p")
        n = _pending(x, t, seeds, offs, p)
        if n in wanted and n not in found:
            found[n] = x
        if len(found) == len(wanted):
            break
    return found


def kernel_times(fn):
    """[(kernel name, us)] of one call in launch order, and the fastest call's total."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(CALLS):
            fn()
        torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type.name == "CUDA"]
    per = len(events) // CALLS
    totals = [sum(e.device_time for e in events[i * per:(i + 1) * per]) for i in range(CALLS)]
    return [(e.name, e.device_time) for e in events[-per:]], min(totals)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--pending", default="0,1,2")
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("profile_sampling needs a CUDA GPU")
    apply_overrides(args.set)
    b, dtype = args.batch, {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    t = torch.full((b,), 0.7, device="cuda")
    seeds = torch.arange(b, device="cuda")
    offs = torch.zeros(b, dtype=torch.int64, device="cuda")
    p = torch.full((b,), args.top_p, device="cuda")
    out = torch.empty(b, dtype=torch.int64, device="cuda")
    x0 = _logits(b, dtype, "top-p")
    _, plain = kernel_times(lambda: sample(x0, t, seeds, offs, out=out))
    print(f"{torch.cuda.get_device_name()} {args.dtype} {b} x {VOCAB}, overrides {args.set or 'none'}: "
          f"plain temperature sampling {plain:.1f} us")
    wanted = [int(n) for n in args.pending.split(",")]
    found = find_inputs(b, dtype, set(wanted), t, seeds, offs, p)
    for n in wanted:
        if n not in found:
            print(f"pending {n}: no input found in {SEARCH} seeds")
            continue
        x = found[n]
        times, total = kernel_times(lambda x=x: sample(x, t, seeds, offs, top_p=p, out=out))
        print(f"pending {n}: {total:.1f} us = {total / plain:.2f}x plain; "
              + ", ".join(f"{name.split('_kernel')[0].lstrip('_')} {us:.1f}" for name, us in times))


if __name__ == "__main__":
    main()
