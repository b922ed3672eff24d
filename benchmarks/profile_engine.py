"""Where an engine step's time goes: the GPU kernel table (torch.profiler) and the host-side Python profile
for a slice of the reference workload. `python benchmarks/profile_engine.py [--num-seqs 256] [--steps 60]`;
`--prefill-tokens N` profiles steps that each prefill one fresh N-token prompt instead (time to first token).

The first steps are prefills, then mostly decode steps at full batch; the kernel table shows whether decode is
bound by attention, the matmuls, or the gaps between kernels, and the host profile whether Python keeps up.
"""
import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.bench import workload  # noqa: E402
from tritium import LLM, SamplingParams  # noqa: E402
from tritium.model.synthetic import ensure_checkpoint  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--num-seqs", type=int, default=256)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--preset", default="qwen3-0.6b")
    ap.add_argument("--prefill-tokens", type=int, default=0)
    args = ap.parse_args()
    llm = LLM(str(ensure_checkpoint(args.preset)), max_model_len=4096)
    if args.prefill_tokens:
        g = torch.Generator().manual_seed(0)
        prompts = [torch.randint(0, 10000, (args.prefill_tokens,), generator=g).tolist() for _ in range(args.steps + 3)]
        one = SamplingParams(temperature=0, max_tokens=1)
        step = lambda i: llm.generate([prompts[i]], one, use_tqdm=False)  # noqa: E731 (one prefill step)
        for i in range(3):
            step(args.steps + i)
    else:
        prompts, params = workload(args.num_seqs, 1024, 1024, 100)
        for p, sp in zip(prompts, params):
            llm.add_request(p, sp)
        for _ in range(20):  # past the prefills: steady decode at full batch
            llm.step()
        step = lambda i: llm.step()  # noqa: E731
    torch.cuda.synchronize()
    host = cProfile.Profile()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        host.enable()
        for i in range(args.steps):
            step(i)
        torch.cuda.synchronize()
        host.disable()
        wall = time.perf_counter() - start
    events = prof.key_averages()
    print(events.table(sort_by="cuda_time_total", row_limit=25))
    gpu_us = sum(e.self_device_time_total for e in events) / args.steps
    print(f"per step: wall {1e3 * wall / args.steps:.2f} ms (profiled), GPU kernels {gpu_us / 1e3:.2f} ms, "
          f"{sum(e.count for e in events if e.self_device_time_total > 0) / args.steps:.0f} kernels")
    pstats.Stats(host).sort_stats("tottime").print_stats(30)
    pstats.Stats(host).sort_stats("cumulative").print_stats(40)


if __name__ == "__main__":
    main()
