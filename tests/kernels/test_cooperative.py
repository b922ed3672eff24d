"""The cooperative launch's grid size (tritium/kernels/cooperative.py's coresident_programs,
which the sampler's bracket rounds use) from a compiled kernel's resources:
it must never exceed what the GPU holds at once, or the launch is refused."""
from types import SimpleNamespace

import torch

from tritium.kernels import cooperative

H200 = SimpleNamespace(regs_per_multiprocessor=65536, max_threads_per_multi_processor=2048,
                       shared_memory_per_multiprocessor=233472, multi_processor_count=132)


def compiled(n_regs, num_warps, shared):
    return SimpleNamespace(n_regs=n_regs, metadata=SimpleNamespace(num_warps=num_warps, shared=shared),
                           _init_handles=lambda: None)


def test_coresident_programs_by_registers_threads_and_shared_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: H200)
    per_sm = lambda *k: cooperative.coresident_programs(compiled(*k), "cuda") // 132  # noqa: E731
    assert per_sm(255, 4, 4096) == 2  # the bracket kernel: 8192 registers a warp, 4 sub-partitions x 2 warps
    assert per_sm(128, 4, 0) == 4
    assert per_sm(192, 2, 0) == 4  # 6144 a warp: 2 warps in each sub-partition's 16384, not 65536 // 12288 = 5
    assert per_sm(32, 1, 0) == 32  # the 32-block cap
    assert per_sm(32, 8, 0) == 8  # threads: 2048 / 256
    assert per_sm(32, 4, 1) == 16  # threads: 2048 / 128
    assert per_sm(32, 4, 100_000) == 2  # shared memory: 233472 // (100096 + 1024)
    assert per_sm(32, 1, 10_050) == 20  # shared memory rounded to 128 bytes: 233472 // (10112 + 1024), not 21
