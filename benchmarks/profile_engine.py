"""Where an engine step's time goes: the GPU kernel table (torch.profiler) and the host-side Python profile
for a slice of the reference workload. `python benchmarks/profile_engine.py [--num-seqs 256] [--steps 60]`.

The first steps are prefills, then mostly decode steps at full batch; the kernel table shows whether decode is
bound by attention, the matmuls, or the gaps between kernels, and the host profile whether Python keeps up.
"""
import argparse
import cProfile
import pstats
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.bench import workload  # noqa: E402
from tritium import LLM  # noqa: E402
from tritium.model.synthetic import ensure_checkpoint  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--num-seqs", type=int, default=256)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--preset", default="qwen3-0.6b")
    args = ap.parse_args()
    llm = LLM(str(ensure_checkpoint(args.preset)), max_model_len=4096)
    prompts, params = workload(args.num_seqs, 1024, 1024, 100)
    for p, sp in zip(prompts, params):
        llm.add_request(p, sp)
    for _ in range(20):  # past the prefills: steady decode at full batch
        llm.step()
    torch.cuda.synchronize()
    host = cProfile.Profile()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        host.enable()
        for _ in range(args.steps):
            llm.step()
        torch.cuda.synchronize()
        host.disable()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
    pstats.Stats(host).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
