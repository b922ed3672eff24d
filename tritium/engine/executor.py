"""Tensor parallelism: the engine process is rank 0 and owns the scheduler; N-1 spawned worker processes
each hold one shard of the model, its KV cache and graphs on their own GPU (or, on a machine without one,
the CPU through the interpreter, with gloo).

Each step rank 0 broadcasts the step's plan (one pickled message on the CPU group), then every rank runs the
same ModelRunner.execute: the layers' all-reduces meet, the logits are gathered to every rank, and every rank
samples the same ids (same logits, same seeds), so the next step's placeholder inputs agree everywhere
without another message. A plan of None tells the workers to stop.

Failures end in an error on rank 0, not a hang: a worker that dies closes its sockets, which fails rank 0's
next collective; rank 0 also checks that every worker is alive before each step. `close` (LLM.exit, the
context manager, interpreter exit) stops the workers, and kills those that do not stop in time.

Under torchrun (one process per GPU, possibly on several machines, the group from the environment) no
worker is spawned: every rank runs the user's script, see TorchrunExecutor.
"""
from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import traceback
import weakref

import torch

from tritium import distributed
from tritium.engine.batch import ScheduledBatch
from tritium.engine.config import EngineConfig
from tritium.engine.model_runner import ModelRunner, SampledTokens

JOIN_S = 10


def check_tensor_parallel(hf_config, n: int, one_host: bool = True) -> None:
    """ValueError naming what does not divide, or the GPUs missing, before any process starts."""
    if one_host and torch.cuda.is_available() and n > torch.cuda.device_count():
        raise ValueError(f"tensor_parallel_size={n} but only {torch.cuda.device_count()} GPUs are visible")
    for name in ("num_attention_heads", "intermediate_size", "moe_intermediate_size",
                 "shared_expert_intermediate_size"):
        value = getattr(hf_config, name, None) or 0  # the MoE widths only where the model has them
        if value % n:
            raise ValueError(f"tensor_parallel_size={n} must divide the model's {name} ({value})")
    kv = hf_config.num_key_value_heads
    if kv % n and n % kv:  # fewer KV heads than ranks: each is replicated on n / kv ranks
        raise ValueError(f"tensor_parallel_size={n} and the model's num_key_value_heads ({kv}): one must "
                         f"divide the other")


def _worker(rank: int, world_size: int, init_method: str, config: EngineConfig) -> None:
    from tritium.model.loader import load_hf_config

    try:
        device = distributed.init(rank, world_size, init_method)
        runner = ModelRunner(config, load_hf_config(config.model), device)
        while (plan := distributed.broadcast()) is not None:
            runner.execute(plan)
        runner.close()
        distributed.shutdown()
    except BaseException:  # the exit closes this rank's sockets, which fails rank 0's collective
        traceback.print_exc()
        raise SystemExit(1)


class TensorParallelExecutor:
    """Rank 0's ModelRunner plus the workers; stands in for the runner (its attributes are rank 0's)."""

    def __init__(self, config: EngineConfig, hf_config):
        n = config.tensor_parallel_size
        check_tensor_parallel(hf_config, n)
        init_method = f"tcp://127.0.0.1:{distributed.free_port()}"
        ctx = mp.get_context("spawn")
        self.workers = [ctx.Process(target=_worker, args=(r, n, init_method, config), daemon=True,
                                    name=f"tritium-tp-rank{r}") for r in range(1, n)]
        for w in self.workers:
            w.start()
        self._in_step = False  # a step was sent but its collectives may not have finished (an error)
        self.runner = None
        try:
            device = distributed.init(0, n, init_method)
            self.runner = ModelRunner(config, hf_config, device)
        except BaseException:
            self._kill()
            raise
        atexit.register(_close_at_exit, weakref.ref(self))

    def __getattr__(self, name):  # model, kv_cache, graphs, num_blocks, ...: rank 0's runner
        if name == "runner":
            raise AttributeError(name)
        return getattr(self.runner, name)

    def _check_workers(self) -> None:
        dead = [(w.name, w.exitcode) for w in self.workers if not w.is_alive()]
        if dead:
            raise RuntimeError(f"tensor-parallel worker(s) exited: {dead}; the engine cannot continue")

    def launch(self, batch: ScheduledBatch) -> SampledTokens:
        if self._in_step:  # the last step failed on rank 0 after the workers started it: they are out of step
            self._kill()
            raise RuntimeError("a tensor-parallel step failed part-way; the engine cannot continue (make a new LLM)")
        self._check_workers()
        plan = batch.plan()
        self._in_step = True
        distributed.broadcast(plan)
        tokens = self.runner.execute(plan)
        self._in_step = False
        return tokens

    def close(self) -> None:
        if self.runner is None:
            return
        clean = bool(self.workers) and not self._in_step and all(w.is_alive() for w in self.workers)
        if clean:
            try:
                distributed.broadcast(None)
            except Exception:
                clean = False
        for w in self.workers:
            w.join(timeout=JOIN_S if clean else 0.5)
        self._kill()
        self.runner.close()
        self.runner = None
        distributed.shutdown()

    def _kill(self) -> None:
        for w in self.workers:
            if w.is_alive():
                w.kill()
            w.join(timeout=JOIN_S)
        self.workers = []


class TorchrunExecutor:
    """Under torchrun every rank runs the same script: the same requests, so the same deterministic schedule
    and the same sampled ids on every rank, and no step message is needed. Each rank's LLM returns the
    results; the script prints them on rank 0. (The server needs the spawned workers instead: its requests
    arrive on one process only.)"""

    def __init__(self, config: EngineConfig, hf_config):
        n = int(os.environ["WORLD_SIZE"])
        if n != config.tensor_parallel_size:
            raise ValueError(f"torchrun started {n} processes but tensor_parallel_size={config.tensor_parallel_size}")
        check_tensor_parallel(hf_config, n, one_host=False)  # the ranks may span machines
        self.runner = ModelRunner(config, hf_config, distributed.init_from_env())
        self.launch = self.runner.launch

    def __getattr__(self, name):
        if name == "runner":
            raise AttributeError(name)
        return getattr(self.runner, name)

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
            self.runner = None
            distributed.shutdown()


def make_runner(config: EngineConfig, hf_config, device: torch.device):
    """The model runner for the config: in-process (N=1), with spawned workers, or one rank of torchrun."""
    if config.tensor_parallel_size == 1:
        return ModelRunner(config, hf_config, device)
    if distributed.launched_by_torchrun():
        return TorchrunExecutor(config, hf_config)
    return TensorParallelExecutor(config, hf_config)


def _close_at_exit(ref) -> None:
    executor = ref()
    if executor is not None:
        executor.close()
