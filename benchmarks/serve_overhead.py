"""The HTTP side's cost per streamed token, without a model: `python benchmarks/serve_overhead.py`.

The app runs over a stand-in engine that gives every running request one token per step, a step every
--step-ms, while streaming clients (threads of other processes) read their streams. Reported: tokens
streamed, the server process's CPU seconds (its event loop, the stand-in engine and uvicorn together) and the
microseconds of it per token, i.e. how many tokens per second one server process can stream, and the
inter-token gaps the clients saw. Runs on the CPU; nothing here needs a GPU.
"""
import argparse
import itertools
import multiprocessing as mp
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_server import percentiles, run_clients  # noqa: E402
from tritium import SamplingParams  # noqa: E402
from tritium.engine.llm import StepOutput  # noqa: E402


class StandInEngine:
    """What the app needs of an engine (start, submit, abort, alive, failure, close), stepping on a timer:
    each step gives every running request the next token of a fixed cycle of vocabulary ids."""

    def __init__(self, vocab: int, step_s: float):
        self.vocab, self.step_s = vocab, step_s
        self.failure = None
        self.alive = True
        self._ids = itertools.count()
        self._running: dict[int, list] = {}  # seq id -> [tokens left, next token]
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def start(self, deliver) -> None:
        threading.Thread(target=self._run, args=(deliver,), daemon=True).start()

    def submit(self, prompts, params, owner) -> Future:
        fut: Future = Future()
        with self._lock:
            ids = [next(self._ids) for _ in prompts]
            for sid, p in zip(ids, params):
                self._running[sid] = [p.max_tokens, 100 + sid % 50, owner]
        fut.set_result(ids)
        return fut

    def abort(self, seq_ids) -> None:
        with self._lock:
            for sid in seq_ids:
                self._running.pop(sid, None)

    def close(self) -> None:
        self._stop.set()

    def _run(self, deliver) -> None:
        while not self._stop.wait(self.step_s):
            items = []
            with self._lock:
                for sid, state in list(self._running.items()):
                    state[0] -= 1
                    state[1] = 100 + (state[1] * 7 + 3) % (self.vocab - 100)
                    done = state[0] == 0
                    items.append((state[2], StepOutput(sid, state[1], done, "length" if done else None)))
                    if done:
                        del self._running[sid]
            if items:
                deliver(items)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=200, help="output tokens per request")
    ap.add_argument("--step-ms", type=float, default=5.0)
    ap.add_argument("--client-processes", type=int, default=2)
    args = ap.parse_args()
    from benchmarks.bench import workload
    from tests.serve.server_harness import running_app
    from tritium.engine.prompts import PromptEncoder
    from tritium.model.synthetic import ensure_checkpoint
    from tritium.serve.app import create_app

    model = str(ensure_checkpoint("tiny"))
    prompts = workload(args.requests, 32, 8, 8, max_id=600)[0]
    params = [SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=args.tokens) for _ in prompts]
    encoder = PromptEncoder.from_checkpoint(model)
    engine = StandInEngine(len(encoder.tokenizer), args.step_ms / 1e3)
    app = create_app(engine, "bench", encoder, 4096)
    with running_app(app) as port:
        cpu, wall = time.process_time(), time.perf_counter()
        res = run_clients(port, prompts, params, len(prompts), args.client_processes)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    tokens = sum(r["tokens"] for r in res)
    assert tokens == args.requests * args.tokens, tokens
    gaps = [b - a for r in res for a, b in zip(r["times"], r["times"][1:])]
    offered = args.requests / (args.step_ms / 1e3)
    print(f"{tokens} tokens over {args.requests} streams in {wall:.2f} s ({tokens / wall:.0f} tok/s streamed, "
          f"{offered:.0f} offered); server process CPU {cpu:.2f} s = {1e6 * cpu / tokens:.1f} us per token")
    print("inter-event gap ms", {k: round(v * 1e3, 2) for k, v in percentiles(gaps).items()})


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
