"""The few-row linear kernel against the fp32 reference: every config, ragged and even tiles, bias, strided
rows, a row's result independent of its batch, the fused prologues (SiLU-and-mul, RMSNorm) and the accumulating
epilogue (the residual add); bf16 at Qwen3 shapes and inside a CUDA graph on the GPU."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tritium.autotune import config_id
from tritium.kernels.activation import silu_and_mul
from tritium.kernels.rmsnorm import rms_norm
from tritium.kernels.skinny_linear import (CONFIGS, HEURISTICS, INTERPRET_CONFIG, MAX_ROWS, skinny_linear,
                                           skinny_linear_ref)
from tensor_checks import assert_close, randn

CPU_DTYPES = [torch.float32, torch.float16]


def _inputs(m, n, k, dtype, device="cpu", pad=0, bias=False, seed=0, gated=False):
    g = torch.Generator(device=device).manual_seed(seed)
    width = 2 * k if gated else k  # gated: x = [a | b]
    x = randn(m, width + pad, dtype=dtype, device=device, generator=g)[:, pad:]  # rows strided when pad > 0
    w = randn(n, k, dtype=dtype, device=device, scale=k ** -0.5, generator=g)
    b = randn(n, dtype=dtype, device=device, generator=g) if bias else None
    return x, w, b


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@given(
    m=st.integers(1, MAX_ROWS),
    n=st.sampled_from([1, 7, 64, 100]),
    k=st.sampled_from([16, 48, 130, 256]),
    dtype=st.sampled_from(CPU_DTYPES),
    pad=st.sampled_from([0, 3]),
    bias=st.booleans(),
    gated=st.booleans(),
    normed=st.booleans(),
    accumulate=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_reference(m, n, k, dtype, pad, bias, gated, normed, accumulate, seed):
    x, w, b = _inputs(m, n, k, dtype, pad=pad, bias=bias, seed=seed, gated=gated)
    norm = (randn(k, generator=_gen(seed + 1)) + 1.0, 1e-6) if normed else None  # fp32, as kept
    out = randn(m, n, dtype=dtype, generator=_gen(seed + 2)) if accumulate else None
    expect = skinny_linear_ref(x, w, b, gated=gated, norm=norm, out=out).float()
    y = skinny_linear(x, w, b, gated=gated, norm=norm, out=out, accumulate=accumulate)
    assert y.shape == (m, n) and y.dtype == dtype and (out is None or y is out)
    assert_close(y, expect, dtype)


@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[3], INTERPRET_CONFIG], ids=config_id)
@pytest.mark.parametrize("m, n, k", [(1, 64, 512), (5, 37, 200)])
def test_gated_is_bit_equal_to_silu_and_mul_then_linear(config, m, n, k):
    x, w, _ = _inputs(m, n, k, torch.float16, pad=4, seed=n, gated=True)
    fused = skinny_linear(x, w, gated=True, config=config)
    assert torch.equal(fused, skinny_linear(silu_and_mul(x), w, config=config))


@pytest.mark.parametrize("config", [CONFIGS[0], INTERPRET_CONFIG], ids=config_id)
@pytest.mark.parametrize("m, n, k", [(1, 64, 512), (5, 37, 200)])
def test_accumulate_is_bit_equal_to_the_product_then_the_add(config, m, n, k):
    x, w, b = _inputs(m, n, k, torch.float16, bias=True, seed=k)
    residual = randn(m, n, dtype=torch.float16, generator=_gen(m))
    expect = (residual.float() + skinny_linear(x, w, b, config=config).float()).half()
    assert torch.equal(skinny_linear(x, w, b, out=residual, accumulate=True, config=config), expect)


@pytest.mark.parametrize("config", [CONFIGS[0], INTERPRET_CONFIG], ids=config_id)
def test_norm_prologue_against_rms_norm_then_the_kernel(config):
    """The fused RMSNorm differs from rms_norm then the kernel at most by the rounding of its mean square."""
    x, w, _ = _inputs(3, 48, 1000, torch.float16, seed=3)
    weight = randn(1000, generator=_gen(4)) + 1.0
    fused = skinny_linear(x, w, norm=(weight, 1e-6), config=config)
    assert_close(fused, skinny_linear(rms_norm(x, weight, 1e-6), w, config=config).float(), torch.float16)
    assert_close(fused, skinny_linear_ref(x, w, norm=(weight, 1e-6)).float(), torch.float16)


@pytest.mark.parametrize("config", CONFIGS + [INTERPRET_CONFIG], ids=config_id)
@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_every_config_even_and_ragged_tiles(config, dtype):
    """Shapes where EVEN holds and where it does not (N or K off the tile), written into a guarded view."""
    seen = set()
    for m, n, k in [(1, 64, 512), (3, 64, 512), (16, 32, 256), (5, 37, 200), (2, 8, 1000)]:
        a = {"N": n, "K": k, "BLOCK_M": 1 << (m - 1).bit_length(), **config.kwargs}
        seen.add(HEURISTICS["EVEN"](a))
        x, w, b = _inputs(m, n, k, dtype, pad=2, bias=n == 37, seed=m * n)
        buf = torch.full((m + 2, n + 6), -7.0, dtype=dtype)
        out = buf[1:1 + m, 3:3 + n]
        assert skinny_linear(x, w, b, out=out, config=config) is out
        assert_close(out, skinny_linear_ref(x, w, b).float(), dtype)
        guard = torch.ones_like(buf, dtype=torch.bool)
        guard[1:1 + m, 3:3 + n] = False
        assert (buf[guard] == -7.0).all(), "a store left the output view"
    assert seen == {True, False}, "both branches of EVEN"


@pytest.mark.parametrize("config", [CONFIGS[0], INTERPRET_CONFIG], ids=config_id)
def test_a_row_does_not_depend_on_its_batch(config):
    """Within a row bucket a row's bits are the same alone or among others (CUDA-graph padding is harmless)."""
    x, w, _ = _inputs(4, 64, 384, torch.float32, seed=5)
    full = skinny_linear(x, w, config=config)
    for m in (3, 4):
        part = skinny_linear(x[:m], w, config=config)
        assert torch.equal(part, full[:m])


def test_bad_inputs_raise():
    x, w, _ = _inputs(2, 8, 32, torch.float32)
    with pytest.raises(ValueError, match="2-D"):
        skinny_linear(x[0], w)
    with pytest.raises(ValueError, match="rows"):
        skinny_linear(randn(MAX_ROWS + 1, 32), w)
    with pytest.raises(ValueError, match="rows"):
        skinny_linear(randn(0, 32), w)
    with pytest.raises(ValueError, match="columns"):
        skinny_linear(randn(2, 31), w)
    with pytest.raises(ValueError, match="columns"):
        skinny_linear(x, w, gated=True)  # gated wants [a | b]: 64 columns
    with pytest.raises(ValueError, match="share"):
        skinny_linear(x, w.half())
    with pytest.raises(ValueError, match="contiguous"):
        skinny_linear(x, randn(32, 8).t())
    with pytest.raises(ValueError, match="bias"):
        skinny_linear(x, w, randn(7))
    with pytest.raises(ValueError, match="out"):
        skinny_linear(x, w, out=torch.empty(2, 9))
    with pytest.raises(ValueError, match="out"):
        skinny_linear(x, w, out=torch.empty(8, 2).t())
    with pytest.raises(ValueError, match="out is required"):
        skinny_linear(x, w, accumulate=True)
    with pytest.raises(ValueError, match="norm weight"):
        skinny_linear(x, w, norm=(randn(31), 1e-6))
    with pytest.raises(ValueError, match="eps"):
        skinny_linear(x, w, norm=(randn(32), -1.0))


# ---- GPU: bf16 at the Qwen3-0.6B / 8B projections ----

SHAPES = {"0.6b qkv": (4096, 1024), "0.6b o": (1024, 2048), "0.6b gate_up": (6144, 1024),
          "0.6b down": (1024, 3072), "8b qkv": (6144, 4096), "8b down": (4096, 12288)}


@pytest.mark.gpu
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("m", [1, 3, 8, 16])
def test_gpu_bf16_every_config(shape, m):
    n, k = SHAPES[shape]
    x, w, _ = _inputs(m, n, k, torch.bfloat16, device="cuda", pad=8)
    ref = skinny_linear_ref(x, w).float()
    assert_close(skinny_linear(x, w), ref, torch.bfloat16)
    for config in CONFIGS:
        assert_close(skinny_linear(x, w, config=config), ref, torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", ["0.6b down", "8b down"], ids=str)
@pytest.mark.parametrize("m", [1, 5, 16])
def test_gpu_gated_is_bit_equal_to_silu_and_mul_then_linear(shape, m):
    n, k = SHAPES[shape]
    x, w, _ = _inputs(m, n, k, torch.bfloat16, device="cuda", gated=True, seed=m)
    for config in CONFIGS:
        fused = skinny_linear(x, w, gated=True, config=config)
        assert torch.equal(fused, skinny_linear(silu_and_mul(x), w, config=config)), config


@pytest.mark.gpu
def test_gpu_in_cuda_graph_and_batch_independent():
    x, w, b = _inputs(8, 4096, 1024, torch.bfloat16, device="cuda", bias=True)
    out = torch.empty(8, 4096, dtype=torch.bfloat16, device="cuda")
    skinny_linear(x, w, b, out=out)  # tune outside the graph
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        skinny_linear(x, w, b, out=out)
    x.copy_(randn(8, 1024, dtype=torch.bfloat16, device="cuda"))
    graph.replay()
    assert_close(out, skinny_linear_ref(x, w, b).float(), torch.bfloat16)
    assert torch.equal(skinny_linear(x[:5], w, b), out[:5])
