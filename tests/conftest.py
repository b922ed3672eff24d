"""Test setup: CPU mode before triton is imported, markers, a seed per test, hypothesis profiles."""
import os
import random

import tritium  # noqa: F401  (chooses the interpreter on a machine without CUDA)
import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    deadline=None,
    max_examples=int(os.environ.get("TRITIUM_HYPOTHESIS_EXAMPLES", "8")),
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev", deadline=None, max_examples=50, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config, items):
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run with -m gpu on a GPU machine)")
    few_gpus = pytest.mark.skip(reason=f"needs >= 2 CUDA GPUs, found {n_gpus}")
    for item in items:
        if "gpu" in item.keywords and n_gpus == 0:
            item.add_marker(no_gpu)
        if "multigpu" in item.keywords and n_gpus < 2:
            item.add_marker(few_gpus)


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def device():
    return tritium.platform.DEVICE


@pytest.fixture(scope="session")
def tiny_checkpoint():
    """Path of the `tiny` synthetic Qwen3 checkpoint (cached under ~/.cache/tritium)."""
    from tritium.model.synthetic import ensure_checkpoint

    return ensure_checkpoint("tiny")
