"""The OpenAI-compatible server on the CPU: many concurrent clients get LLM.generate's greedy tokens; bad
requests get error JSON and the server keeps serving; a client that disconnects frees its blocks."""
import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tritium import LLM, SamplingParams
from serve.server_harness import request, running_server, stream

NEW = 10
PROMPTS = ["The quick brown fox", "Hello", "1 2 3 4 5", "jumps over the lazy dog", "A", "tritium serves",
           "zz top", "The fox 1234 jumps."]
CHATS = [[{"role": "user", "content": p}] for p in PROMPTS]


@pytest.fixture(scope="module")
def llm(tiny_checkpoint):
    with LLM(tiny_checkpoint, kvcache_block_size=16, max_model_len=512) as llm:
        yield llm


@pytest.fixture(scope="module")
def reference(llm):
    greedy = SamplingParams(temperature=0, max_tokens=NEW, ignore_eos=True)
    plain = llm.generate(PROMPTS, greedy, use_tqdm=False)
    chat = llm.chat(CHATS, greedy, use_tqdm=False)
    return plain, chat


@pytest.fixture(scope="module")
def server(llm, reference):  # the reference runs first, on the idle engine
    with running_server(llm) as (port, engine):
        yield port, engine


GREEDY = {"model": "tiny", "max_tokens": NEW, "temperature": 0, "ignore_eos": True, "return_token_ids": True}


def _streamed(events, chat):
    """(text, token ids, finish reason) of a one-choice stream."""
    text, ids, finish = "", [], None
    for e in events:
        if not e["choices"]:
            continue
        c = e["choices"][0]
        text += (c["delta"].get("content") or "") if chat else c["text"]
        ids += c.get("token_ids", [])
        finish = c["finish_reason"] or finish
    return text, ids, finish


def _client(port, k):
    """Client k: completions or chat, streaming or not; returns (text, token ids, finish reason)."""
    chat, streaming, i = k % 2 == 1, k % 4 >= 2, k // 2 % len(PROMPTS)
    body = {**GREEDY, "messages": CHATS[i]} if chat else {**GREEDY, "prompt": PROMPTS[i]}
    path = "/v1/chat/completions" if chat else "/v1/completions"
    if streaming:
        return _streamed(stream(port, path, body), chat)
    status, out = request(port, "POST", path, body)
    assert status == 200, out
    c = out["choices"][0]
    assert out["usage"]["completion_tokens"] == len(c["token_ids"]) == NEW
    return (c["message"]["content"] if chat else c["text"]), c["token_ids"], c["finish_reason"]


def test_concurrent_clients_get_generate_tokens(server, reference):
    port, _ = server
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda k: _client(port, k), range(16)))
    for k, (text, ids, finish) in enumerate(got):
        want = reference[k % 2][k // 2 % len(PROMPTS)]
        assert (text, ids, finish) == (want["text"], want["token_ids"], "length"), k


def test_models_health_and_usage(server, llm):
    port, _ = server
    assert request(port, "GET", "/health") == (200, {"status": "ok"})
    status, models = request(port, "GET", "/v1/models")
    assert status == 200 and [m["id"] for m in models["data"]] == ["tiny"]
    events = stream(port, "/v1/completions", {**GREEDY, "prompt": PROMPTS[0], "stream_options": {"include_usage": True}})
    assert events[-1]["choices"] == [] and events[-1]["usage"] == {
        "prompt_tokens": len(llm.encode_prompt(PROMPTS[0])), "completion_tokens": NEW,
        "total_tokens": len(llm.encode_prompt(PROMPTS[0])) + NEW}


def test_stop_strings_end_the_text_before_them(server, reference):
    port, _ = server
    want = reference[0][0]
    text = want["text"]
    stop = text[3:5]  # the text's first occurrence of it is at or before 3
    cut = text.index(stop)
    body = {**GREEDY, "prompt": PROMPTS[0], "stop": ["never-there", stop]}
    status, out = request(port, "POST", "/v1/completions", body)
    assert status == 200 and out["choices"][0]["text"] == text[:cut] and out["choices"][0]["finish_reason"] == "stop"
    assert _streamed(stream(port, "/v1/completions", body), False)[0::2] == (text[:cut], "stop")
    # a stop token id ends with that token, kept
    tok = want["token_ids"][4]
    status, out = request(port, "POST", "/v1/completions", {**GREEDY, "prompt": PROMPTS[0], "stop": [tok]})
    first = want["token_ids"].index(tok)
    assert out["choices"][0]["token_ids"] == want["token_ids"][: first + 1]


def test_n_choices_and_seeds(server):
    port, _ = server
    body = {"prompt": PROMPTS[1], "max_tokens": 8, "temperature": 1.0, "n": 3, "seed": 7, "ignore_eos": True,
            "return_token_ids": True}
    _, first = request(port, "POST", "/v1/completions", body)
    _, again = request(port, "POST", "/v1/completions", body)
    ids = [c["token_ids"] for c in first["choices"]]
    assert [c["index"] for c in first["choices"]] == [0, 1, 2] and len({tuple(i) for i in ids}) > 1
    assert ids == [c["token_ids"] for c in again["choices"]]  # seeded: reproducible
    assert first["usage"]["completion_tokens"] == 24


@pytest.mark.parametrize("body,status,match", [
    ({"model": "gpt-4", "prompt": "x"}, 404, "does not exist"),
    ({"prompt": "x", "temperature": -1}, 400, "temperature"),
    ({"prompt": "x", "top_p": "high"}, 400, "top_p"),
    ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": "x", "n": 0}, 400, "'n'"),
    ({"prompt": "x", "logprobs": 3}, 400, "'logprobs' is not supported"),
    ({"prompt": [5, 10**7]}, 400, "outside the vocabulary"),
    ({"prompt": ""}, 400, "empty prompt"),
    ({"prompt": "word " * 600}, 400, "maximum context length"),
    ({"prompt": "x", "max_tokens": 600}, 400, "maximum context length"),
    ({"prompt": "x", "stream": "yes"}, 400, "'stream'"),
    ({"nothing": 1}, 400, "'prompt'"),
])
def test_bad_requests_get_error_json_and_the_server_keeps_serving(server, reference, body, status, match):
    port, _ = server
    got, out = request(port, "POST", "/v1/completions", body)
    assert got == status and set(out) == {"error"} and match in out["error"]["message"], out
    assert request(port, "POST", "/v1/completions", {**GREEDY, "prompt": PROMPTS[2]})[1]["choices"][0][
        "token_ids"] == reference[0][2]["token_ids"]


def test_malformed_json_bad_chat_and_unknown_routes(server, llm, monkeypatch):
    from jinja2 import TemplateError

    port, _ = server
    assert request(port, "POST", "/v1/completions", raw=b"{not json")[0] == 400
    status, out = request(port, "POST", "/v1/chat/completions", {"messages": [{"role": "user"}]})
    assert status == 400 and "content" in out["error"]["message"]

    def strict(*args, **kwargs):
        raise TemplateError("Conversation roles must alternate user/assistant")

    monkeypatch.setattr(llm.tokenizer, "apply_chat_template", strict)
    status, out = request(port, "POST", "/v1/chat/completions", {"messages": CHATS[0]})
    assert status == 400 and "roles must alternate" in out["error"]["message"]
    status, out = request(port, "GET", "/v1/nothing")
    assert status == 404 and out["error"]["type"] == "not_found_error"


def test_a_failed_engine_step_fails_its_requests_and_the_server_recovers(server, llm, reference, monkeypatch):
    port, _ = server
    real = llm.runner.launch
    failures = []

    def fail_once(batch):
        if not failures:
            failures.append(1)
            raise RuntimeError("injected step failure")
        return real(batch)

    monkeypatch.setattr(llm.runner, "launch", fail_once)
    status, out = request(port, "POST", "/v1/completions", {**GREEDY, "prompt": PROMPTS[0]})
    assert status == 500 and "injected step failure" in out["error"]["message"]
    assert request(port, "GET", "/health")[0] == 200
    status, out = request(port, "POST", "/v1/completions", {**GREEDY, "prompt": PROMPTS[1]})
    assert status == 200 and out["choices"][0]["token_ids"] == reference[0][1]["token_ids"]


def _engine_state(engine):
    return engine.call(lambda llm: (llm.scheduler.is_finished(), llm.scheduler.block_manager.num_free_blocks,
                                    llm.runner.num_blocks)).result(timeout=30)


def test_disconnect_mid_stream_aborts_and_frees_blocks(server, monkeypatch):
    port, engine = server
    aborted = []
    real_abort = engine.llm.abort
    monkeypatch.setattr(engine.llm, "abort", lambda sid: (aborted.append(sid), real_abort(sid)))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = {"prompt": PROMPTS[3] * 8, "max_tokens": 400, "temperature": 0, "ignore_eos": True, "stream": True}
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.readline().startswith(b"data: ")
    finished, free, total = _engine_state(engine)
    assert not finished and free < total  # the request is running and holds blocks
    conn.sock.close()  # the client goes away mid-stream
    conn.close()
    deadline = time.monotonic() + 30
    while _engine_state(engine)[:2] != (True, total):
        assert time.monotonic() < deadline, "the aborted request still holds blocks"
        time.sleep(0.2)
    assert len(aborted) == 1  # freed by the abort, not by running to max_tokens


def test_tokens_queued_while_a_stream_was_busy_leave_as_one_piece_per_choice(llm):
    import asyncio

    from tritium.engine.llm import StepOutput
    from tritium.serve.app import _Run
    from tritium.serve.protocol import parse_request

    req = parse_request({"prompt": [[1, 2], [3]], "max_tokens": 3}, chat=False, model_name="tiny",
                        max_model_len=512, encode=llm.encode_prompt)
    run = _Run(engine=None, req=req, tokenizer=llm.tokenizer)
    run.seq_ids, run._index = [7, 8], {7: 0, 8: 1}
    ids = [[40, 41, 42], [50, 51, 52]]

    async def pieces():
        for step in range(2):  # two steps of both choices queued before the stream looks
            for sid, toks in zip(run.seq_ids, ids):
                run.queue.put_nowait(StepOutput(sid, toks[step], False))
        got = []
        async for piece in run.pieces():
            got.append(piece)
            if len(got) == 2:  # then the last step, one token per choice, each finishing
                for sid, toks in zip(run.seq_ids, ids):
                    run.queue.put_nowait(StepOutput(sid, toks[2], True, "length"))
        return got

    got = asyncio.run(pieces())
    assert [(i, tok, finish) for i, _, tok, finish in got] == [
        (0, [40, 41], None), (1, [50, 51], None), (0, [42], "length"), (1, [52], "length")]
    for k in range(2):
        assert "".join(text for i, text, _, _ in got if i == k) == llm.tokenizer.decode(ids[k])
