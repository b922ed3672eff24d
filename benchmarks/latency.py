"""Latency at batch 1, 8 and 64: time to first token (TTFT) and time per output token (TPOT) of requests that
arrive together, with 512-token prompts and 128 greedy output tokens, measured from `LLM.stream` events.

TPOT is (last token time - first token time) / (tokens - 1) per request; both are medians over the requests of
5 rounds per batch size (`--repeats`: one batch-1 request alone varies by 10-20% run to run). The batch-1
decode floor is the bytes a decode step must read (weights, of an MoE block only the routed experts', + the
context's KV) over the card's copy bandwidth, measured in the same run. `python benchmarks/latency.py
[--batches 1 8 64] [--preset NAME]`; writes benchmarks/results/<gpu>/latency.json (latency_<preset>.json for
another preset).
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tritium import autotune  # noqa: E402
from tritium import LLM, SamplingParams  # noqa: E402
from tritium.engine.config import PIECEWISE_GRAPH_TOKENS  # noqa: E402
from tritium.model.synthetic import ensure_checkpoint  # noqa: E402
from tritium.platform import gpu_name  # noqa: E402

PROMPT, OUTPUT = 512, 128


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second (1 GiB buffers, median of 20)."""
    a = torch.empty(1 << 29, dtype=torch.int16, device="cuda").random_()
    b = torch.empty_like(a)
    times = []
    for _ in range(23):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        b.copy_(a)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * a.nbytes / statistics.median(times[3:])


def measure(llm, batch: int, salt: int, repeats: int) -> dict:
    """Medians over `repeats` rounds of `batch` fresh prompts each (no prefix-cache hits between rounds)."""
    ttft, tpot = [], []
    params = SamplingParams(temperature=0, max_tokens=OUTPUT, ignore_eos=True)
    for r in range(repeats):
        g = torch.Generator().manual_seed(salt * 1000 + r)
        prompts = [torch.randint(0, 10000, (PROMPT,), generator=g).tolist() for _ in range(batch)]
        start, times = time.perf_counter(), [[] for _ in range(batch)]
        for event in llm.stream(prompts, params):
            times[event["index"]].append(time.perf_counter() - start)
        ttft += [t[0] for t in times]
        tpot += [(t[-1] - t[0]) / (len(t) - 1) for t in times]
    return {"batch": batch, "repeats": repeats, "ttft_ms": 1e3 * statistics.median(ttft),
            "tpot_ms": 1e3 * statistics.median(tpot)}


def batch1_weight_bytes(model) -> int:
    """Weight bytes one decode token reads: every parameter once, but of each MoE block's experts only the
    top k it is routed to."""
    from tritium.model.moe import SparseMoeBlock

    def nbytes(module):
        return sum(p.numel() * p.element_size() for p in module.parameters())

    total = nbytes(model)
    for m in model.modules():
        if isinstance(m, SparseMoeBlock):
            total -= nbytes(m.experts) * (m.experts.num_experts - m.top_k) // m.experts.num_experts
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="qwen3-0.6b")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--repeats", type=int, default=5, help="rounds per batch size (medians over all)")
    ap.add_argument("--piecewise-graph-tokens", type=int, default=PIECEWISE_GRAPH_TOKENS,
                    help="prefill steps up to this many tokens replay piecewise CUDA graphs (0: eager)")
    args = ap.parse_args()
    start = time.perf_counter()
    llm = LLM(str(ensure_checkpoint(args.preset)), max_model_len=4096,
              piecewise_graph_tokens=args.piecewise_graph_tokens)
    startup_s = time.perf_counter() - start
    rows = [measure(llm, b, salt=i, repeats=args.repeats) for i, b in enumerate(args.batches)]
    weights = batch1_weight_bytes(llm.runner.model)
    kv_per_token = llm.runner.kv_cache[:, :, 0, 0].nbytes  # K and V of one token, all layers
    llm.exit()
    bw = copy_bandwidth()
    mean_context = PROMPT + OUTPUT / 2
    floor_ms = 1e3 * (weights + kv_per_token * mean_context) / bw
    for r in rows:
        print(f"batch {r['batch']:3d}: TTFT {r['ttft_ms']:7.2f} ms, TPOT {r['tpot_ms']:6.3f} ms")
    print(f"start-up {startup_s:.1f} s (piecewise_graph_tokens={args.piecewise_graph_tokens}, PDL {autotune.PDL})")
    print(f"batch-1 decode floor {floor_ms:.3f} ms ({weights / 1e9:.2f} GB weights + KV at {bw / 1e12:.2f} TB/s "
          f"copy)")
    out = {"date": time.strftime("%Y-%m-%d"), "gpu": torch.cuda.get_device_name(), "prompt_tokens": PROMPT,
           "model": args.preset, "output_tokens": OUTPUT, "copy_bytes_per_s": bw, "batch1_floor_ms": floor_ms,
           "piecewise_graph_tokens": args.piecewise_graph_tokens, "pdl": autotune.PDL, "startup_s": startup_s,
           "rows": rows}
    pw = args.piecewise_graph_tokens
    name = ("latency" + ("" if args.preset == "qwen3-0.6b" else f"_{args.preset}")
            + ("" if pw == PIECEWISE_GRAPH_TOKENS else f"_pw{pw}") + ("_pdl" if autotune.PDL else "") + ".json")
    path = ROOT / "benchmarks" / "results" / gpu_name() / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
