"""The tensor-parallel process group: NCCL between GPUs (gloo on the CPU) for the model's collectives, plus a
gloo group on the CPU for the engine's own messages (one step plan per step, the KV-cache size).

One group per process at a time: the layers read their rank and size from it when they are built
(tritium.model.layers.tp_rank_and_size).
"""
from __future__ import annotations

import datetime
import os
import socket

import torch
import torch.distributed as dist

TIMEOUT = datetime.timedelta(seconds=int(os.environ.get("TRITIUM_TP_TIMEOUT_S", "600")))
_control = None  # the CPU group for engine messages


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or {"RANK", "WORLD_SIZE", "LOCAL_RANK"} <= set(os.environ)


def init_from_env() -> torch.device:
    """Join the group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)."""
    return init(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), "env://", int(os.environ["LOCAL_RANK"]))


def init(rank: int, world_size: int, init_method: str, local_rank: int | None = None) -> torch.device:
    """Join the group; returns this rank's device (cuda:local_rank on a GPU machine, else the CPU)."""
    global _control
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # NVLink multicast stays off on the lent machines
    if torch.cuda.is_available():
        local = rank if local_rank is None else local_rank
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        dist.init_process_group("nccl", init_method=init_method, rank=rank, world_size=world_size,
                                timeout=TIMEOUT, device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size,
                                timeout=TIMEOUT)
    _control = dist.new_group(backend="gloo", timeout=TIMEOUT)
    return device


def is_parallel() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast(obj=None):
    """Rank 0 sends obj to every rank (one pickled message); every rank returns it."""
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_control)
    return box[0]


def min_over_ranks(value: int) -> int:
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=_control)
    return int(t.item())


def shutdown() -> None:
    global _control
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _control = None
