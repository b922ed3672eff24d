"""Where the reference bench's time goes, step by step: `python benchmarks/timeline.py [--preset qwen3-0.6b]`.

Runs bench.py's workload through LLM.step and records, for every step, the batch (sequences, decode rows,
tokens), the host's busy time (scheduling, building inputs, launching, postprocessing) and the time it waited
for the previous step's sampled ids (the GPU still running: a step whose wait is ~0 is bound by the host).
Each row's batch is the one the step launched; its wait is for the step before. Prints a table by batch size
and (GPU) writes the per-step rows to benchmarks/results/<gpu>/timeline.json.
"""
import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from benchmarks.bench import workload  # noqa: E402
from tritium import LLM  # noqa: E402
from tritium.engine import model_runner  # noqa: E402
from tritium.model.synthetic import ensure_checkpoint  # noqa: E402
from tritium.platform import HAS_CUDA, gpu_name  # noqa: E402

BANDS = ((1, 8), (9, 32), (33, 128), (129, 255), (256, 1 << 30))


def timed_steps(llm: LLM) -> list[dict]:
    """Step the queued requests to the end; one row per step."""
    waited = [0.0]
    tolist = model_runner.SampledTokens.tolist

    def timed_tolist(self):
        t = time.perf_counter()
        try:
            return tolist(self)
        finally:
            waited[0] += time.perf_counter() - t

    model_runner.SampledTokens.tolist = timed_tolist
    rows = []
    try:
        while not llm.is_finished():
            waited[0] = 0.0
            t = time.perf_counter()
            llm.step()
            total = time.perf_counter() - t
            batch = llm._in_flight[0] if llm._in_flight else None
            rows.append(dict(seqs=len(batch) if batch else 0, decodes=batch.num_decodes if batch else 0,
                             tokens=batch.num_tokens if batch else 0, step_s=total, wait_s=waited[0]))
    finally:
        model_runner.SampledTokens.tolist = tolist
    return rows


def summary(rows: list[dict]) -> list[str]:
    lines = [f"{'sequences':>12} {'steps':>6} {'step ms':>8} {'host ms':>8} {'wait ms':>8} {'share of time':>13}"]
    total = sum(r["step_s"] for r in rows)
    for kind, keep in (("decode", lambda r: r["tokens"] == r["decodes"]), ("prefill/mixed",
                                                                          lambda r: r["tokens"] > r["decodes"])):
        lines.append(kind)
        for lo, hi in BANDS:
            band = [r for r in rows if keep(r) and lo <= r["seqs"] <= hi]
            if band:
                n, s = len(band), sum(r["step_s"] for r in band)
                w = sum(r["wait_s"] for r in band)
                lines.append(f"{f'{lo}-{min(hi, 9999)}':>12} {n:>6} {1e3 * s / n:>8.2f} {1e3 * (s - w) / n:>8.2f} "
                             f"{1e3 * w / n:>8.2f} {s / total:>12.1%}")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="qwen3-0.6b" if HAS_CUDA else "tiny")
    ap.add_argument("--num-seqs", type=int, default=256 if HAS_CUDA else 4)
    args = ap.parse_args()
    big = HAS_CUDA
    prompts, params = workload(args.num_seqs, 1024, 1024, 100) if big else workload(args.num_seqs, 48, 16, 8, 1000)
    llm = LLM(str(ensure_checkpoint(args.preset)), max_model_len=4096, kvcache_block_size=256 if big else 16)
    llm.generate(prompts[:8], params[:8], use_tqdm=False)  # a first, untimed run
    for p, sp in zip(prompts, params):
        llm.add_request(p, sp)
    start = time.perf_counter()
    rows = timed_steps(llm)
    elapsed = time.perf_counter() - start
    out_tokens = sum(p.max_tokens for p in params)
    print(f"{gpu_name()}: {len(rows)} steps, {elapsed:.2f} s, {out_tokens / elapsed:.0f} output tok/s")
    print("\n".join(summary(rows)))
    llm.exit()
    if not HAS_CUDA:
        return
    path = ROOT / "benchmarks" / "results" / gpu_name() / "timeline.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "seconds": elapsed, "steps": rows}))


if __name__ == "__main__":
    main()
