"""Microbenchmark harness shared by every kernel's benchmark module.

- `measure_ceilings()` measures the card's device-to-device copy bandwidth (bytes read + written) and its
  bf16 matmul rate in the same run as the kernels, so results are reported as ratios to them.
- `time_us(fn)` times one call: with triton's do_bench (median), which zeroes a 256 MB buffer before each
  call; or (graph=True) inside a CUDA graph of many calls, so neither the host's launch cost nor that flush
  is what gets measured. Plain do_bench suits only work much longer than the host's per-call Python time:
  when fn's host time passes the ~60 us flush, the GPU idles between the start event and the kernel and
  the gap is timed as kernel time.
- `Row` is one table line; `report()` prints the table and writes JSON under benchmarks/results/<gpu>/.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tritium.platform import gpu_name

RESULTS = Path(__file__).resolve().parents[1] / "results"
GRAPH_CALLS = 50  # calls per captured graph when timing small kernels


def time_us(fn, *, graph: bool = False, calls: int = GRAPH_CALLS, warmup_ms: float = 25, rep_ms: float = 100) -> float:
    """Median microseconds per call of fn(). graph=True captures `calls` calls into one CUDA graph
    (fn must be capturable: no host syncs, no tuning) and times its replays."""
    import triton.testing

    fn()  # compile / tune outside of any timing or capture
    torch.cuda.synchronize()
    if not graph:
        return triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median") * 1e3
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    ms = triton.testing.do_bench(g.replay, warmup=warmup_ms, rep=rep_ms, return_mode="median")
    del g  # free the graph's private memory pool before the next shape
    return ms * 1e3 / calls


def measure_ceilings() -> dict:
    """Copy bandwidth (TB/s, read+write) over 1 GiB and bf16 8192^3 matmul TFLOP/s on random data."""
    n = 1 << 29  # 1 GiB of bf16
    src = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    us = time_us(lambda: dst.copy_(src))
    copy_tbs = 2 * src.numel() * src.element_size() / (us * 1e-6) / 1e12
    del src, dst
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    us = time_us(lambda: a @ b)
    tflops = 2 * 8192**3 / (us * 1e-6) / 1e12
    return {"copy_TBps": copy_tbs, "bf16_matmul_TFLOPs": tflops, "gpu": torch.cuda.get_device_name()}


@dataclass
class Row:
    kernel: str
    shape: str
    us: float
    bytes: float = 0.0  # fewest bytes the op must move (each input read once, each output written once)
    flops: float = 0.0
    peers: dict = field(default_factory=dict)  # name -> us of a peer on the same shape
    # Ours timed in the peers' convention (outputs allocated per call, as the reference returns them), where
    # `us` writes static output buffers: the basis of the peer ratios (see rowbench.measure).
    us_alloc: float | None = None

    def peer_ratios(self) -> dict:
        """{peer: peer us / ours} against ours in the peers' convention where it was timed."""
        basis = self.us_alloc or self.us
        return {k: v / basis for k, v in self.peers.items() if v}

    def gbps(self) -> float:
        return self.bytes / (self.us * 1e-6) / 1e9

    def tflops(self) -> float:
        return self.flops / (self.us * 1e-6) / 1e12


def compiled_or_none(fn):
    """torch.compile of a reference, or None where compile is unavailable."""
    try:
        return torch.compile(fn, dynamic=False)
    except Exception:  # noqa: BLE001 (a missing compiler must not stop the benchmark)
        return None


def report(rows: list[Row], ceilings: dict, name: str) -> Path:
    """Print the table and write benchmarks/results/<gpu>/<name>.json."""
    copy_gbps = ceilings["copy_TBps"] * 1e3
    mm = ceilings["bf16_matmul_TFLOPs"]
    print(f"\n== {name} on {ceilings['gpu']}: copy {ceilings['copy_TBps']:.2f} TB/s, bf16 mm {mm:.0f} TFLOP/s ==")
    print(f"{'kernel':<22} {'shape':<28} {'us':>9} {'GB/s':>8} {'%copy':>6} {'TFLOP/s':>8} {'%mm':>5}  peers (x = peer us / ours, like for like)")
    out = []
    for r in rows:
        ratios = r.peer_ratios()
        peers = " ".join(f"{k}:{x:.2f}x" for k, x in ratios.items())
        print(
            f"{r.kernel:<22} {r.shape:<28} {r.us:9.2f} {r.gbps():8.0f} {100 * r.gbps() / copy_gbps:6.1f} "
            f"{r.tflops():8.1f} {100 * r.tflops() / mm:5.1f}  {peers}"
        )
        d = asdict(r)
        d.update(GBps=r.gbps(), pct_copy=100 * r.gbps() / copy_gbps, TFLOPs=r.tflops(), pct_mm=100 * r.tflops() / mm,
                 peer_ratios=ratios)
        out.append(d)
    path = RESULTS / gpu_name() / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "ceilings": ceilings, "rows": out}, indent=1))
    return path
