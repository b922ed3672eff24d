"""The server with its engine in a process of its own (what `python -m tritium serve` runs): the same tokens as
LLM.generate for concurrent clients, refused start-ups raise at once, and a dead engine process fails its
requests and /health instead of hanging them."""
import http.client
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tritium import LLM, SamplingParams
from tritium.engine.prompts import PromptEncoder
from tritium.serve.app import create_app
from tritium.serve.engine_process import EngineProcess
from serve.server_harness import request, running_app, stream

OPTIONS = {"kvcache_block_size": 16, "max_model_len": 512}
PROMPTS = ["The quick brown fox", "Hello", "1 2 3 4 5", "jumps over the lazy dog"]
NEW = 8
GREEDY = {"model": "tiny", "max_tokens": NEW, "temperature": 0, "ignore_eos": True, "return_token_ids": True}


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    with LLM(tiny_checkpoint, **OPTIONS) as llm:
        return llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=NEW, ignore_eos=True),
                            use_tqdm=False)


def _serving(checkpoint):
    engine = EngineProcess(checkpoint, OPTIONS)
    return engine, create_app(engine, "tiny", PromptEncoder.from_checkpoint(checkpoint), engine.max_model_len)


def _ids(port, k):
    body = {**GREEDY, "prompt": PROMPTS[k % len(PROMPTS)]}
    if k % 2:
        return [i for e in stream(port, "/v1/completions", body) for c in e["choices"] for i in c["token_ids"]]
    status, out = request(port, "POST", "/v1/completions", body)
    assert status == 200, out
    return out["choices"][0]["token_ids"]


def test_concurrent_clients_get_generate_tokens_and_close_stops_the_process(tiny_checkpoint, reference):
    engine, app = _serving(tiny_checkpoint)
    with running_app(app) as port:
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda k: _ids(port, k), range(8)))
        assert got == [reference[k % len(PROMPTS)]["token_ids"] for k in range(8)]
        status, out = request(port, "GET", "/v1/models")
        assert status == 200 and out["data"][0]["max_model_len"] == 512
    assert not engine.process.is_alive() and engine.process.exitcode == 0  # the app's shutdown closed it


def test_an_engine_that_cannot_start_raises_its_error(tiny_checkpoint):
    with pytest.raises(ValueError, match="max_num_seqs"):
        EngineProcess(tiny_checkpoint, {**OPTIONS, "max_num_seqs": 0})


def test_a_killed_engine_process_fails_its_requests_and_health(tiny_checkpoint):
    engine, app = _serving(tiny_checkpoint)
    with running_app(app) as port:
        assert request(port, "GET", "/health")[0] == 200
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # a long request in flight
        body = {**GREEDY, "prompt": PROMPTS[0], "max_tokens": 400, "stream": True}
        conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.readline().startswith(b"data: ")  # it runs
        start = time.monotonic()
        os.kill(engine.process.pid, signal.SIGKILL)
        events = [json.loads(line[6:]) for line in resp if line.startswith(b"data: {")]
        conn.close()
        assert time.monotonic() - start < 15
        assert "error" in events[-1] and "engine" in events[-1]["error"]["message"]
        status, out = request(port, "GET", "/health")
        assert status == 503 and "exited" in out["error"]
        status, out = request(port, "POST", "/v1/completions", {**GREEDY, "prompt": PROMPTS[1]})
        assert status == 500 and "engine" in out["error"]["message"]
    assert not engine.process.is_alive()
