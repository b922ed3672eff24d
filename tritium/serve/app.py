"""The HTTP server: Starlette routes over one engine, run by uvicorn.

The engine is an EngineProcess (`serve`: the engine in a process of its own) or an EngineLoop (an LLM of this
process, on a thread). Each request submits its choices to it; it hands each step's new tokens to the event
loop in one call (`deliver`), where they are detokenized (stop strings applied) and streamed as server-sent events
or gathered into one JSON body. A request whose client goes away is aborted, which frees its KV blocks.
"""
from __future__ import annotations

import asyncio
import contextlib
import json

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tritium.engine.detokenize import IncrementalText
from tritium.engine.prompts import PromptEncoder
from tritium.serve.protocol import (APIError, GenerationRequest, chunk_body, new_id, parse_request,
                                    response_body, usage_chunk)

DISCONNECT_POLL_S = 0.5


class _Run:
    """One HTTP request's choices in the engine: tokens arrive on the event loop, leave as text pieces."""

    def __init__(self, engine, req: GenerationRequest, tokenizer):
        self.engine, self.req = engine, req
        self.texts = [IncrementalText(tokenizer, req.stop) for _ in req.prompts]
        self.finish: list[str | None] = [None] * len(req.prompts)
        self.seq_ids: list[int] = []
        self.queue: asyncio.Queue = asyncio.Queue()  # StepOutputs, or the exception that failed a step

    async def start(self) -> None:
        try:
            self.seq_ids = await asyncio.wrap_future(self.engine.submit(self.req.prompts, self.req.params, self))
        except ValueError as e:  # the engine refused a request (nothing was queued)
            raise APIError(400, str(e)) from None
        self._index = {sid: i for i, sid in enumerate(self.seq_ids)}

    async def pieces(self):
        """Yield (choice index, new text, its token ids, finish reason or None) until every choice ends. What
        arrived while the stream was busy is taken together: one piece per choice, however many tokens."""
        while None in self.finish:
            outs = [await self.queue.get()]
            while not self.queue.empty():
                outs.append(self.queue.get_nowait())
            pieces: dict[int, list] = {}  # choice -> [text, token ids]
            for out in outs:
                if isinstance(out, BaseException):
                    raise APIError(500, f"the engine failed: {out}", type="server_error")
                i = self._index[out.seq_id]
                if self.finish[i] is not None:
                    continue  # a token computed after the choice hit a stop string
                text = self.texts[i]
                piece = pieces.setdefault(i, ["", []])
                piece[0] += text.add(out.token_id, final=out.finished)
                piece[1].append(out.token_id)
                if text.stopped:
                    self.finish[i] = "stop"
                    self.engine.abort([out.seq_id])
                elif out.finished:
                    self.finish[i] = out.finish_reason
            for i, (delta, ids) in pieces.items():
                yield i, delta, ids, self.finish[i]

    def abort_unfinished(self) -> None:
        left = [sid for sid, f in zip(self.seq_ids, self.finish) if f is None]
        if left:
            self.engine.abort(left)

    @property
    def completion_tokens(self) -> int:
        return sum(len(t.token_ids) for t in self.texts)


class _EventStream(StreamingResponse):
    """Server-sent events that abort their request however the response ends (done, error, disconnect)."""

    def __init__(self, run: _Run, content):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.run = run

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.run.abort_unfinished()


def _sse(data) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def refuse_torchrun() -> None:
    """Under torchrun every rank would serve its own clients, and the ranks' schedules would part."""
    from tritium.distributed import launched_by_torchrun

    if launched_by_torchrun():
        raise ValueError("the server runs its tensor-parallel workers itself: start it with "
                         "`python -m tritium serve --tensor-parallel-size N`, not under torchrun")


def create_app(engine, model_name: str, prompts: PromptEncoder, max_model_len: int) -> Starlette:
    """engine: an EngineProcess or EngineLoop, not yet started; prompts: the checkpoint's tokenizer."""
    refuse_torchrun()
    loop: asyncio.AbstractEventLoop | None = None  # the server's, known once it starts

    def dispatch(items) -> None:
        for run, out in items:
            run.queue.put_nowait(out)

    def deliver(items) -> None:  # on the engine thread: one hop to the event loop per step
        loop.call_soon_threadsafe(dispatch, items)

    engine.start(deliver)
    tokenizer = prompts.tokenizer

    async def generate(request: Request, chat: bool) -> Response:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"the request body is not valid JSON: {e}") from None
        req = parse_request(body, chat=chat, model_name=model_name, max_model_len=max_model_len,
                            encode=prompts.encode, encode_chat=prompts.chat)
        run = _Run(engine, req, tokenizer)
        await run.start()
        rid = new_id(chat)
        if req.stream:
            return _EventStream(run, _stream(run, rid))
        return await _gather(request, run, rid)

    async def _stream(run: _Run, rid: str):
        req = run.req
        if req.chat:  # the first chunk of each choice names the role
            for i in range(len(req.prompts)):
                yield _sse(chunk_body(req, rid, model_name, i, "", role=True))
        try:
            async for i, delta, ids, finish in run.pieces():
                if delta or finish is not None or req.return_token_ids:
                    yield _sse(chunk_body(req, rid, model_name, i, delta or None, finish, ids))
        except APIError as e:
            yield _sse(e.body())
        else:
            if req.include_usage:
                yield _sse(usage_chunk(req, rid, model_name, run.completion_tokens))
        yield _sse("[DONE]")

    async def _gather(request: Request, run: _Run, rid: str) -> Response:
        async def collect():
            async for _ in run.pieces():
                pass

        task = asyncio.ensure_future(collect())
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
                if not task.done() and await request.is_disconnected():
                    task.cancel()
                    return Response(status_code=499)  # nobody is listening; the request is aborted below
            task.result()
        finally:
            run.abort_unfinished()
        choices = [{"text": t.text, "token_ids": t.token_ids, "finish_reason": f}
                   for t, f in zip(run.texts, run.finish)]
        return JSONResponse(response_body(run.req, rid, model_name, choices))

    async def completions(request: Request) -> Response:
        return await generate(request, chat=False)

    async def chat_completions(request: Request) -> Response:
        return await generate(request, chat=True)

    async def models(request: Request) -> Response:
        card = {"id": model_name, "object": "model", "created": 0, "owned_by": "tritium",
                "max_model_len": max_model_len}
        return JSONResponse({"object": "list", "data": [card]})

    async def health(request: Request) -> Response:
        if not engine.alive:
            return JSONResponse({"status": "error", "error": str(engine.failure)}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def api_error(request: Request, exc: APIError) -> Response:
        return JSONResponse(exc.body(), status_code=exc.status)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return JSONResponse(APIError(exc.status_code, str(exc.detail), type="not_found_error"
                                     if exc.status_code == 404 else "invalid_request_error").body(),
                            status_code=exc.status_code)

    async def server_error(request: Request, exc: Exception) -> Response:
        return JSONResponse(APIError(500, f"internal error: {exc}", type="server_error").body(), status_code=500)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        nonlocal loop
        loop = asyncio.get_running_loop()
        yield
        engine.close()

    app = Starlette(
        lifespan=lifespan,
        routes=[Route("/v1/completions", completions, methods=["POST"]),
                Route("/v1/chat/completions", chat_completions, methods=["POST"]),
                Route("/v1/models", models, methods=["GET"]), Route("/health", health, methods=["GET"])],
        exception_handlers={APIError: api_error, HTTPException: http_error, Exception: server_error},
    )
    app.state.engine = engine
    return app


def serve(model: str, engine_options: dict, model_name: str, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Start the engine process, then serve until interrupted (uvicorn)."""
    import uvicorn

    from tritium.serve.engine_process import EngineProcess

    refuse_torchrun()
    engine = EngineProcess(model, engine_options)
    try:
        app = create_app(engine, model_name, PromptEncoder.from_checkpoint(model), engine.max_model_len)
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        engine.close()
