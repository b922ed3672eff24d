"""The engine in its own thread, shared by every HTTP request.

Only this thread touches the LLM. Handlers hand it work through a queue (`submit`, `abort`, `call`); each
step's tokens leave in one `deliver([(owner, output), ...])` call on this thread (owner: what `submit` was
given; output: a StepOutput, or the exception that failed the step), which the server forwards to its event
loop in one hop. Between steps the thread takes everything queued, so requests that arrive while a step runs join the
next one: continuous batching across clients with no lock held per request. With nothing to do it sleeps
until woken by new work.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Callable

from tritium.engine.llm import LLM, StepOutput
from tritium.engine.sampling_params import SamplingParams

Deliver = Callable[[list[tuple[object, "StepOutput | BaseException"]]], None]


class EngineLoop:
    def __init__(self, llm: LLM):
        self.llm = llm
        self.deliver: Deliver | None = None
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._owners: dict[int, object] = {}  # seq id -> whose request it is
        self._closing = False
        self.failure: BaseException | None = None  # what stopped the thread, if anything did
        self._thread = threading.Thread(target=self._run, name="tritium-engine", daemon=True)

    def start(self, deliver: Deliver) -> None:
        """Start stepping; each step's tokens go to deliver (called on the engine thread)."""
        self.deliver = deliver
        self._thread.start()

    # ---- called from any thread ----------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.failure is None

    def call(self, fn: Callable[[LLM], object]) -> Future:
        """Run fn(llm) on the engine thread between steps; its result (or exception) lands in the future."""
        fut: Future = Future()
        self._inbox.put((fn, fut))
        self._wake.set()
        if not self.alive or self._closing:  # nobody will take it: fail it (and anything else left) now
            self._fail_queued(RuntimeError(f"the engine loop has stopped: {self.failure or 'closed'}"))
        return fut

    def submit(self, prompts: list[list[int]], params: list[SamplingParams], owner) -> Future:
        """Queue requests (all or none: a ValueError lands in the future); the future gets their seq ids."""
        def add(llm: LLM) -> list[int]:
            ids = llm.add_requests(prompts, params)
            for sid in ids:
                self._owners[sid] = owner
            return ids
        return self.call(add)

    def abort(self, seq_ids) -> Future:
        def drop(llm: LLM) -> None:
            for sid in seq_ids:
                if self._owners.pop(sid, None) is not None:
                    llm.abort(sid)
        return self.call(drop)

    def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _fail_queued(self, error: BaseException) -> None:
        while True:
            try:
                _, fut = self._inbox.get_nowait()
            except queue.Empty:
                return
            if fut.set_running_or_notify_cancel():
                fut.set_exception(error)

    # ---- the engine thread ---------------------------------------------------------------------------
    def _drain(self) -> None:
        while True:
            try:
                fn, fut = self._inbox.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(self.llm))
            except BaseException as e:  # the caller sees it; the loop goes on
                fut.set_exception(e)

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # the thread is gone: every request waiting on it must hear so
            self.failure = e
            try:
                self.deliver([(owner, e) for owner in set(self._owners.values())])
            finally:
                self._fail_queued(RuntimeError(f"the engine loop has stopped: {e}"))

    def _loop(self) -> None:
        while not self._closing:
            self._drain()
            if self.llm.is_finished():
                self._wake.wait()
                self._wake.clear()
                continue
            try:
                outs = self.llm.step()
            except Exception as e:  # a failed step fails every request; the engine starts again empty
                self.deliver([(owner, e) for owner in set(self._owners.values())])
                self._owners.clear()
                self.llm.reset()
                continue
            items = [(self._owners[out.seq_id], out) for out in outs if out.seq_id in self._owners]
            for out in outs:
                if out.finished:
                    self._owners.pop(out.seq_id, None)
                    self.llm.release(out.seq_id)
            if items:
                self.deliver(items)
