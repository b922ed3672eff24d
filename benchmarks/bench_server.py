"""Server load: concurrent streaming clients against `python -m tritium serve`, beside LLM.generate on the
same prompts and sampling settings.

The server runs in its own process (its engine in another); the clients are threads spread over a few processes
(so that reading the streams does not limit the server), each sending /v1/completions requests (prompt token
ids, stream: true) one after another until the requests run out. Reported: output tok/s of the server (wall
clock, first request sent to last token received) and of LLM.generate, their ratio (the server's overhead);
time to first token and inter-token latency (gaps between a request's streamed events; an event carries
several tokens when its stream fell behind) at p50/p90/p99.
GPU: the bench.py workload (256 requests) with 256 clients; CPU: the tiny preset and a few short requests.
`python benchmarks/bench_server.py [--clients N] [--num-seqs N]`; writes benchmarks/results/<gpu>/server.json.
"""
import argparse
import http.client
import json
import multiprocessing as mp
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench import workload  # noqa: E402
from tritium import LLM  # noqa: E402
from tritium.model.synthetic import ensure_checkpoint  # noqa: E402
from tritium.platform import HAS_CUDA, gpu_name  # noqa: E402


def start_server(model: str, port: int, block_size: int, timeout_s: float = 900) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tritium", "serve", "--model", model, "--port", str(port), "--served-model-name",
           "bench", "--max-model-len", "4096", "--kvcache-block-size", str(block_size)]
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    server = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": path}, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("the server did not come up")


def one_request(port: int, prompt, params) -> dict:
    body = {"model": "bench", "prompt": prompt, "max_tokens": params.max_tokens, "temperature": params.temperature,
            "ignore_eos": params.ignore_eos, "stream": True, "stream_options": {"include_usage": True},
            # an event for every piece of tokens, text or not: the synthetic checkpoints' tokenizer covers few
            # of their ids, and a stream sends no event for tokens without text
            "return_token_ids": True}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    sent = time.perf_counter()
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    # read1 returns what has arrived (iterating over lines would wait for a full buffer and bunch the events)
    times, last, buf, done = [], None, b"", False
    while not done:
        data = resp.read1(65536)
        if not data:
            break
        now = time.perf_counter()
        buf += data
        *events, buf = buf.split(b"\n\n")
        for event in events:
            if event.startswith(b"data: [DONE]"):
                done = True
            elif event.startswith(b"data: "):
                times.append(now)
                last = event
    conn.close()
    tokens = json.loads(last[6:])["usage"]["completion_tokens"]  # the usage event comes last
    times.pop()  # ... and is not a token
    return {"sent": sent, "times": times, "tokens": tokens}


def _uvicorn_stack() -> str:
    """Which HTTP parser and event loop uvicorn's "auto" picks here (httptools / uvloop when installed)."""
    import importlib.util

    have = [m for m in ("httptools", "uvloop") if importlib.util.find_spec(m)]
    return "+".join(have) or "h11+asyncio"


def percentiles(xs) -> dict:
    qs = statistics.quantiles(xs, n=100, method="inclusive") if len(xs) > 1 else list(xs) * 99
    return {"p50": qs[49], "p90": qs[89], "p99": qs[98]}


def _client_process(port: int, items, clients: int) -> list[dict]:
    """`clients` threads of one process sending `items` ((prompt, params) pairs) one after another."""
    work: queue.SimpleQueue = queue.SimpleQueue()
    for item in items:
        work.put(item)
    results, lock = [], threading.Lock()

    def client():
        while True:
            try:
                prompt, p = work.get_nowait()
            except queue.Empty:
                return
            r = one_request(port, prompt, p)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def run_clients(port: int, prompts, params, clients: int, processes: int) -> list[dict]:
    """The clients spread over processes, so that reading the streams is not what limits the server."""
    processes = max(1, min(processes, clients))
    items = list(zip(prompts, params))
    jobs = [(port, items[k::processes], len(range(k, clients, processes))) for k in range(processes)]
    with mp.get_context("fork").Pool(processes) as pool:  # before this process touches CUDA
        return [r for part in pool.starmap(_client_process, jobs) for r in part]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="qwen3-0.6b" if HAS_CUDA else "tiny")
    ap.add_argument("--num-seqs", type=int, default=256 if HAS_CUDA else 4)
    ap.add_argument("--clients", type=int, default=None, help="concurrent clients (default: one per request)")
    ap.add_argument("--client-processes", type=int, default=8 if HAS_CUDA else 2)
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args()
    model = str(ensure_checkpoint(args.preset))
    prompts, params = (workload(args.num_seqs, 1024, 1024, 100) if HAS_CUDA
                       else workload(args.num_seqs, 48, 16, 8, max_id=1000))
    block = 256 if HAS_CUDA else 16
    clients = args.clients or len(prompts)
    t0 = time.perf_counter()
    server = start_server(model, args.port, block)
    startup = time.perf_counter() - t0
    try:
        res = run_clients(args.port, prompts, params, clients, args.client_processes)
    finally:
        server.terminate()
        server.wait(timeout=60)
    tokens = sum(r["tokens"] for r in res)
    assert tokens == sum(p.max_tokens for p in params), "every request must run to max_tokens"
    wall = max(r["times"][-1] for r in res) - min(r["sent"] for r in res)
    ttft = [r["times"][0] - r["sent"] for r in res]
    itl = [b - a for r in res for a, b in zip(r["times"], r["times"][1:])]
    # where first tokens wait: by when the request was sent, and on the clock of the first request sent
    t0 = min(r["sent"] for r in res)
    by_send = sorted(res, key=lambda r: r["sent"])
    quarters = [by_send[k * len(res) // 4:(k + 1) * len(res) // 4] for k in range(4)]
    ttft_by_quarter = [statistics.median(r["times"][0] - r["sent"] for r in q) * 1e3 for q in quarters if q]

    with LLM(model, max_model_len=4096, kvcache_block_size=block) as llm:
        start = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        gen_s = time.perf_counter() - start
    assert sum(len(o["token_ids"]) for o in outs) == tokens
    result = {"date": time.strftime("%Y-%m-%d"), "model": args.preset, "requests": len(prompts),
              "clients": clients, "client_processes": args.client_processes, "output_tokens": tokens,
              "server_startup_s": startup, "server_s": wall, "server_tok_per_s": tokens / wall, "generate_s": gen_s,
              "generate_tok_per_s": tokens / gen_s, "server_over_generate": (tokens / wall) / (tokens / gen_s),
              "ttft_ms": {k: v * 1e3 for k, v in percentiles(ttft).items()},
              "itl_ms": {k: v * 1e3 for k, v in percentiles(itl).items()},
              "sent_over_s": by_send[-1]["sent"] - t0,
              "ttft_p50_ms_by_send_quarter": ttft_by_quarter,
              "first_token_at_s": percentiles([r["times"][0] - t0 for r in res]),
              "http": _uvicorn_stack()}
    print(f"{args.preset} on {gpu_name()}: {len(prompts)} requests, {clients} streaming clients, {tokens} output "
          f"tokens; server {tokens / wall:.0f} tok/s ({wall:.2f} s), LLM.generate {tokens / gen_s:.0f} tok/s "
          f"({gen_s:.2f} s): ratio {result['server_over_generate']:.2f}")
    print("TTFT ms", {k: round(v, 1) for k, v in result["ttft_ms"].items()},
          "ITL ms", {k: round(v, 2) for k, v in result["itl_ms"].items()})
    print(f"requests sent over {result['sent_over_s']:.2f} s; TTFT p50 ms by send-order quarter",
          [round(v) for v in ttft_by_quarter], "; first tokens at s", {k: round(v, 2) for k, v in
                                                                    result["first_token_at_s"].items()},
          "; uvicorn", result["http"])
    if HAS_CUDA:
        import torch

        result["gpu"] = torch.cuda.get_device_name()
        path = ROOT / "benchmarks" / "results" / gpu_name() / "server.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
