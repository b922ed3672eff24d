"""SamplingParams and EngineConfig: defaults, normalisation, and a clear ValueError for every bad value."""
import dataclasses
import math

import numpy as np
import pytest

from tritium.engine.config import EngineConfig
from tritium.engine.sampling_params import SamplingParams


def test_sampling_defaults_and_greedy():
    p = SamplingParams()
    assert (p.temperature, p.top_k, p.top_p, p.min_p, p.max_tokens) == (1.0, 0, 1.0, 0.0, 64)
    assert (p.ignore_eos, p.stop_token_ids, p.seed) == (False, (), None)
    assert not p.is_greedy
    assert SamplingParams(temperature=0).is_greedy
    assert SamplingParams(temperature=0.0, top_k=5).is_greedy


def test_sampling_normalises():
    p = SamplingParams(stop_token_ids=[3, np.int64(7)], top_k=np.int32(4), temperature=np.float32(0.5),
                       seed=np.int64(9))
    assert p.stop_token_ids == (3, 7) and all(type(x) is int for x in p.stop_token_ids)
    assert type(p.top_k) is int and type(p.temperature) is float and type(p.seed) is int
    assert SamplingParams(stop_token_ids={5}).stop_token_ids == (5,)
    assert SamplingParams(top_k=-1).top_k == -1  # -1 and 0 both mean "off"
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.temperature = 2.0


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=math.inf), "temperature"),
        (dict(temperature=math.nan), "temperature"),
        (dict(temperature="1"), "temperature"),
        (dict(temperature=True), "temperature"),
        (dict(top_k=-2), "top_k"),
        (dict(top_k=2.0), "top_k"),
        (dict(top_k=True), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.01), "top_p"),
        (dict(top_p=math.nan), "top_p"),
        (dict(min_p=-0.01), "min_p"),
        (dict(min_p=1.5), "min_p"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(max_tokens=3.0), "max_tokens"),
        (dict(max_tokens=None), "max_tokens"),
        (dict(ignore_eos=1), "ignore_eos"),
        (dict(seed=-1), "seed"),
        (dict(seed=2**63), "seed"),
        (dict(seed=1.5), "seed"),
        (dict(stop_token_ids=[1, -3]), "stop_token_ids"),
        (dict(stop_token_ids=[1.0]), "stop_token_ids"),
        (dict(stop_token_ids=5), "stop_token_ids"),
        (dict(stop_token_ids="ab"), "stop_token_ids"),
    ],
)
def test_sampling_rejects(kw, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kw)


def test_sampling_accepts_edges():
    SamplingParams(temperature=0, top_p=1.0, min_p=1.0, max_tokens=1, seed=0, top_k=-1)
    SamplingParams(temperature=1e-6, top_p=1e-9, min_p=0.0, seed=2**63 - 1, stop_token_ids=(0,))


def test_config_defaults():
    c = EngineConfig("some/dir")
    assert (c.max_num_batched_tokens, c.max_num_seqs, c.max_model_len) == (16384, 512, 4096)
    assert (c.gpu_memory_utilization, c.tensor_parallel_size, c.enforce_eager) == (0.9, 1, False)
    assert (c.kvcache_block_size, c.num_kvcache_blocks, c.enable_prefix_caching) == (256, -1, True)
    assert (c.dtype, c.seed) == (None, 0)
    assert c.max_blocks_per_seq() == 16
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.max_num_seqs = 3
    assert dataclasses.replace(c, max_model_len=1000).max_model_len == 1000


@pytest.mark.parametrize("bs", [16, 32, 64, 128, 256])
def test_config_block_sizes(bs):
    assert EngineConfig("m", kvcache_block_size=bs).kvcache_block_size == bs


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(model=""), "model"),
        (dict(model=None), "model"),
        (dict(max_num_batched_tokens=0), "max_num_batched_tokens"),
        (dict(max_num_batched_tokens=1.5), "max_num_batched_tokens"),
        (dict(max_num_seqs=0), "max_num_seqs"),
        (dict(max_model_len=-4), "max_model_len"),
        (dict(tensor_parallel_size=0), "tensor_parallel_size"),
        (dict(gpu_memory_utilization=0.0), "gpu_memory_utilization"),
        (dict(gpu_memory_utilization=1.2), "gpu_memory_utilization"),
        (dict(gpu_memory_utilization="0.5"), "gpu_memory_utilization"),
        (dict(enforce_eager="yes"), "enforce_eager"),
        (dict(enable_prefix_caching=0), "enable_prefix_caching"),
        (dict(kvcache_block_size=8), "kvcache_block_size"),
        (dict(kvcache_block_size=48), "kvcache_block_size"),
        (dict(kvcache_block_size=512), "kvcache_block_size"),
        (dict(kvcache_block_size=True), "kvcache_block_size"),
        (dict(num_kvcache_blocks=0), "num_kvcache_blocks"),
        (dict(num_kvcache_blocks=-2), "num_kvcache_blocks"),
        (dict(dtype="int8"), "dtype"),
        (dict(seed=-1), "seed"),
    ],
)
def test_config_rejects(kw, field):
    kw = {"model": "m", **kw}
    with pytest.raises(ValueError, match=field):
        EngineConfig(**kw)


def test_config_dtype_aliases():
    torch = pytest.importorskip("torch")
    for value, want in [("bf16", "bfloat16"), ("FP16", "float16"), ("half", "float16"), ("float", "float32"),
                        ("auto", None), (None, None), (torch.bfloat16, "bfloat16"), (torch.float32, "float32")]:
        assert EngineConfig("m", dtype=value).dtype == want


def test_from_kwargs():
    c = EngineConfig.from_kwargs("dir", max_num_seqs=4, enforce_eager=True)
    assert c.model == "dir" and c.max_num_seqs == 4 and c.enforce_eager
    with pytest.raises(ValueError) as e:
        EngineConfig.from_kwargs("dir", max_num_seq=4, block_size=16, enforce_eager=True)
    msg = str(e.value)
    assert "block_size" in msg and "max_num_seq" in msg  # both unknown names
    for name in EngineConfig.field_names():  # and every valid one
        if name != "model":
            assert name in msg.split("valid options are:")[1]
    with pytest.raises(ValueError, match="max_num_seqs"):
        EngineConfig.from_kwargs("dir", max_num_seqs=0)  # known name, bad value: validated too
