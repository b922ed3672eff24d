"""A tritium server on a free local port in a background thread, and small blocking HTTP clients."""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(llm, model_name="tiny"):
    """The app over an EngineLoop of llm (this process's LLM); yields (port, engine)."""
    from tritium.serve.app import create_app
    from tritium.serve.engine_loop import EngineLoop

    app = create_app(EngineLoop(llm), model_name, llm.prompts, llm.config.max_model_len)
    with running_app(app) as port:
        yield port, app.state.engine


@contextmanager
def running_app(app):
    """uvicorn serving app on a free local port in a background thread; yields the port."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def request(port, method, path, body=None, raw: bytes | None = None, timeout=120):
    """(status, parsed JSON body) of one request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    return resp.status, json.loads(payload)


def stream(port, path, body, timeout=120):
    """The parsed `data:` events of a streaming request, up to and without the final [DONE] (asserted)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("POST", path, body=json.dumps({**body, "stream": True}), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("content-type").startswith("text/event-stream")
    events = []
    for line in resp:
        line = line.decode().strip()
        if not line:
            continue
        assert line.startswith("data: "), line
        if line == "data: [DONE]":
            conn.close()
            return events
        events.append(json.loads(line[len("data: "):]))
    raise AssertionError("the stream ended without [DONE]")
