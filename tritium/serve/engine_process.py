"""The server's engine in a process of its own.

The HTTP process parses requests, detokenizes and streams; the engine process schedules and launches steps.
Each has its own interpreter, so neither waits on the other's Python (the per-token work of streaming is
about as large as the engine's host work per step, and in one process they took turns).

`EngineProcess` offers the app what `EngineLoop` does (start, submit, abort, alive, failure, close); inside the
child an EngineLoop runs the LLM. Messages over one pipe, in order:
  to the child:   ("submit", key, prompts, params) | ("abort", seq_ids) | ("close",)
  to the parent:  ("ready", max_model_len) or ("failed", error) once; then ("submitted", key, seq_ids or error),
                  ("step", [StepOutput, ...] or error) per step, and ("dead", error) if the engine thread died.
A step's error fails every request in the engine (the loop starts again empty); errors cross as ValueError
(the request was refused) or RuntimeError (anything else).
"""
from __future__ import annotations

import itertools
import multiprocessing as mp
import threading
from concurrent.futures import Future

from tritium.serve.engine_loop import Deliver, EngineLoop

POLL_S = 0.5
CLOSE_WAIT_S = 30


def _portable(e: BaseException) -> Exception:
    """An exception that pickles and keeps what the app tells apart: refused (ValueError) or failed."""
    return ValueError(str(e)) if isinstance(e, ValueError) else RuntimeError(f"{type(e).__name__}: {e}")


def _child(model: str, options: dict, conn) -> None:
    from tritium.engine.llm import LLM

    try:
        llm = LLM(model, **options)
    except BaseException as e:
        conn.send(("failed", _portable(e)))
        return
    lock = threading.Lock()  # the engine thread and this one both send

    def send(msg) -> None:
        with lock:
            conn.send(msg)

    def deliver(items) -> None:
        errors = [out for _, out in items if isinstance(out, BaseException)]
        send(("step", _portable(errors[0]) if errors else [out for _, out in items]))

    def submitted(key, fut: Future) -> None:
        e = fut.exception()
        send(("submitted", key, fut.result() if e is None else _portable(e)))

    engine = EngineLoop(llm)
    engine.start(deliver)
    send(("ready", llm.config.max_model_len))
    try:
        while engine.alive:
            if not conn.poll(POLL_S):
                continue
            msg = conn.recv()
            if msg[0] == "submit":
                _, key, prompts, params = msg
                engine.submit(prompts, params, key).add_done_callback(lambda f, key=key: submitted(key, f))
            elif msg[0] == "abort":
                engine.abort(msg[1])
            else:
                break
        if engine.failure is not None:
            send(("dead", _portable(engine.failure)))
    except (EOFError, OSError):  # the HTTP process is gone
        pass
    finally:
        engine.close()
        llm.exit()


class EngineProcess:
    def __init__(self, model: str, options: dict | None = None):
        """Start the engine process and wait until its LLM is built (its error is raised here if not)."""
        ctx = mp.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        # Not a daemon: the engine process starts its own tensor-parallel workers.
        self.process = ctx.Process(target=_child, args=(model, options or {}, child_conn), name="tritium-engine")
        self.process.start()
        child_conn.close()
        try:
            kind, value = self._conn.recv()
        except EOFError:
            self.process.join()
            raise RuntimeError(f"the engine process exited with code {self.process.exitcode} while starting")
        if kind == "failed":
            self.process.join()
            raise value
        self.max_model_len: int = value
        self.failure: BaseException | None = None
        self._keys = itertools.count()
        self._submits: dict[int, tuple[Future, object]] = {}  # key -> (future of the seq ids, owner)
        self._owner_of: dict[int, object] = {}  # seq id -> its owner, while it runs
        self._state = threading.Lock()  # the receiver thread and the callers both change the maps
        self._send_lock = threading.Lock()
        self._receiver: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        return self.failure is None and self.process.is_alive()

    def start(self, deliver: Deliver) -> None:
        self._receiver = threading.Thread(target=self._receive, args=(deliver,), name="tritium-engine-rx",
                                          daemon=True)
        self._receiver.start()

    def _send(self, msg) -> None:
        with self._send_lock:
            self._conn.send(msg)

    def submit(self, prompts, params, owner) -> Future:
        fut: Future = Future()
        if not self.alive:
            fut.set_exception(RuntimeError(f"the engine has stopped: {self.failure or 'its process exited'}"))
            return fut
        with self._state:
            key = next(self._keys)
            self._submits[key] = (fut, owner)
        try:
            self._send(("submit", key, prompts, params))
        except OSError as e:  # the process went away just now
            with self._state:
                self._submits.pop(key, None)
            fut.set_exception(RuntimeError(f"the engine has stopped: {e}"))
        return fut

    def abort(self, seq_ids) -> None:
        with self._state:
            for sid in seq_ids:
                self._owner_of.pop(sid, None)
        if self.alive:
            try:
                self._send(("abort", list(seq_ids)))
            except OSError:
                pass

    def _receive(self, deliver: Deliver) -> None:
        error: BaseException | None = None
        try:
            while error is None:
                msg = self._conn.recv()
                if msg[0] == "submitted":
                    self._submitted(*msg[1:])
                elif msg[0] == "step" and not isinstance(msg[1], BaseException):
                    self._step(msg[1], deliver)
                else:  # a failed step fails everything running; a dead engine everything from now on
                    self._fail_running(msg[1], deliver)
                    error = msg[1] if msg[0] == "dead" else None
        except (EOFError, OSError):
            self.process.join(timeout=CLOSE_WAIT_S)
            error = RuntimeError(f"the engine process exited (code {self.process.exitcode})")
        self.failure = error
        with self._state:
            submits, self._submits = list(self._submits.values()), {}
        for fut, _ in submits:
            fut.set_exception(error)
        self._fail_running(error, deliver)

    def _fail_running(self, error: BaseException, deliver: Deliver) -> None:
        """Every running request's owner hears `error`; none is running afterwards."""
        with self._state:
            owners, self._owner_of = set(self._owner_of.values()), {}
        if owners:
            deliver([(owner, error) for owner in owners])

    def _submitted(self, key: int, result) -> None:
        with self._state:
            fut, owner = self._submits.pop(key)
            if not isinstance(result, BaseException):
                self._owner_of.update((sid, owner) for sid in result)
        fut.set_exception(result) if isinstance(result, BaseException) else fut.set_result(result)

    def _step(self, outs, deliver: Deliver) -> None:
        items = []
        with self._state:
            for out in outs:
                owner = self._owner_of.pop(out.seq_id, None) if out.finished else self._owner_of.get(out.seq_id)
                if owner is not None:  # else aborted here while the step ran
                    items.append((owner, out))
        if items:
            deliver(items)

    def close(self) -> None:
        """Stop the engine process (its workers with it); waits for it, then kills it if it hangs."""
        if self.process.is_alive():
            try:
                self._send(("close",))
            except OSError:
                pass
            self.process.join(timeout=CLOSE_WAIT_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        if self._receiver is not None:
            self._receiver.join(timeout=CLOSE_WAIT_S)
        self._conn.close()
