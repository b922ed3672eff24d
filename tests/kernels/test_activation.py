"""SiLU-and-mul against the fp32 reference and transformers' Qwen3 MLP activation."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tritium.autotune import config_id
from tritium.kernels.activation import CONFIGS, HEURISTICS, INTERPRET_CONFIG, silu_and_mul, silu_and_mul_ref
from tensor_checks import assert_close, randn

CPU_DTYPES = [torch.float32, torch.float16]


@given(
    t=st.integers(1, 6),
    f=st.sampled_from([1000, 1536, 2560, 5120, 3, 64]),
    dtype=st.sampled_from(CPU_DTYPES),
    scale=st.sampled_from([0.1, 1.0, 8.0]),
    pad=st.sampled_from([0, 10]),
    seed=st.integers(0, 2**16),
)
def test_silu_and_mul_matches_reference(t, f, dtype, scale, pad, seed):
    g = torch.Generator().manual_seed(seed)
    x = randn(t, 2 * f + pad, dtype=dtype, scale=scale, generator=g)[:, pad : pad + 2 * f]  # strided rows
    y = silu_and_mul(x)
    assert y.shape == (t, f) and y.dtype == dtype
    assert_close(y, silu_and_mul_ref(x).float(), dtype)


def test_matches_transformers_activation():
    from transformers.activations import ACT2FN

    x = randn(4, 2 * 1536)
    gate, up = x[:, :1536], x[:, 1536:]
    assert_close(silu_and_mul(x), ACT2FN["silu"](gate) * up)


@pytest.mark.parametrize("config", CONFIGS + [INTERPRET_CONFIG], ids=config_id)
@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_every_config(config, dtype):
    # 5 rows x 1000 columns: 5000 outputs, a partial last block and rows spanning programs for every config
    x = randn(5, 2000, dtype=dtype, scale=3.0)
    out = torch.empty(5, 1100, dtype=dtype)[:, :1000]
    assert silu_and_mul(x, out=out, config=config) is out
    assert_close(out, silu_and_mul_ref(x).float(), dtype)


@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_interpreter_config_over_several_blocks(dtype):
    # The interpreter's widest blocks: 3 programs (the last partial), rows spanning programs, strided in and out.
    xb, f = INTERPRET_CONFIG.kwargs["XBLOCK"], 1100
    t = 2 * xb // f + 5
    assert 2 * xb < t * f < 3 * xb
    x = randn(t, 2 * f + 8, dtype=dtype, scale=3.0)[:, 4 : 4 + 2 * f]
    out = torch.empty(t, f + 20, dtype=dtype)[:, 10 : 10 + f]
    assert silu_and_mul(x, out=out, config=INTERPRET_CONFIG) is out
    assert_close(out, silu_and_mul_ref(x).float(), dtype)


def test_empty_input():
    assert silu_and_mul(torch.empty(0, 64)).shape == (0, 32)


def test_bad_inputs_raise():
    x = randn(4, 64)
    with pytest.raises(ValueError, match="2-D"):
        silu_and_mul(randn(64))
    with pytest.raises(ValueError, match="even"):
        silu_and_mul(randn(4, 63))
    with pytest.raises(ValueError, match="dtype"):
        silu_and_mul(x.to(torch.int32))
    with pytest.raises(ValueError, match="contiguous last"):
        silu_and_mul(randn(64, 4).t())
    with pytest.raises(ValueError, match="out"):
        silu_and_mul(x, out=torch.empty(4, 64))
    with pytest.raises(ValueError, match="out"):
        silu_and_mul(x, out=torch.empty(4, 32, dtype=torch.float16))
    with pytest.raises(ValueError, match="contiguous last"):
        silu_and_mul(x, out=torch.empty(32, 4).t())


# ---- GPU: bf16 at Qwen3-0.6B / 8B shapes (intermediate 3072 / 12288) ----

@pytest.mark.gpu
@pytest.mark.parametrize("inter", [3072, 12288])
@pytest.mark.parametrize("tokens", [1, 16, 256, 4096])
def test_gpu_bf16(inter, tokens):
    dt = torch.bfloat16
    x = randn(tokens, 2 * inter, dtype=dt, device="cuda", scale=2.0)
    ref = silu_and_mul_ref(x).float()
    assert_close(silu_and_mul(x), ref, dt)
    for config in CONFIGS:
        assert_close(silu_and_mul(x, config=config), ref, dt)
    # strided rows in and out (row strides not multiples of 16 elements, unaligned bases)
    xs = randn(tokens, 2 * inter + 8, dtype=dt, device="cuda", scale=2.0)[:, 4 : 4 + 2 * inter]
    buf = torch.full((tokens, inter + 20), -7.0, dtype=dt, device="cuda")
    out = buf[:, 10 : 10 + inter]
    ref = silu_and_mul_ref(xs).float()
    for config in CONFIGS:
        assert silu_and_mul(xs, out=out, config=config) is out
        assert_close(out, ref, dt)
    assert (buf[:, :10] == -7.0).all() and (buf[:, 10 + inter :] == -7.0).all()


@pytest.mark.gpu
def test_gpu_in_cuda_graph():
    dt = torch.bfloat16
    x = randn(16, 2 * 3072, dtype=dt, device="cuda")
    out = torch.empty(16, 3072, dtype=dt, device="cuda")
    silu_and_mul(x, out=out)  # tune outside the graph
    out.zero_()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        silu_and_mul(x, out=out)
    x.copy_(randn(16, 2 * 3072, dtype=dt, device="cuda"))
    graph.replay()
    assert_close(out, silu_and_mul_ref(x).float(), dt)


# ---- mask-free blocks: EVEN (T * F % XBLOCK == 0), both branches, every config ----

def _shapes(xb):
    """(T, F) pairs over which every config sees both EVEN branches, with rows that span programs
    (F = 3/4 XBLOCK, F = XBLOCK + 24), rows split evenly over programs (F = 2 XBLOCK) and many short rows
    per program (F = 8, 3)."""
    return [(4, 3 * xb // 4), (5, 3 * xb // 4), (3, 2 * xb), (3, xb + 24), (xb // 4, 8), (xb // 4 + 1, 3)]


@pytest.mark.parametrize("config", CONFIGS + [INTERPRET_CONFIG], ids=config_id)
@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_every_config_even_and_ragged_blocks(config, dtype):
    xb = config.kwargs["XBLOCK"]
    seen = set()
    for t, f in _shapes(xb):
        seen.add(HEURISTICS["EVEN"]({"n_out": t * f, "XBLOCK": xb}))
        g = torch.Generator().manual_seed(t * 10000 + f)
        x = randn(t, 2 * f + 6, dtype=dtype, scale=3.0, generator=g)[:, 2 : 2 + 2 * f]  # strided rows
        buf = torch.full((t + 4, f + 8), -7.0, dtype=dtype)  # guard rows/columns around the output
        out = buf[2 : 2 + t, 4 : 4 + f]
        assert silu_and_mul(x, out=out, config=config) is out
        assert_close(out, silu_and_mul_ref(x).float(), dtype)
        guard = torch.ones_like(buf, dtype=torch.bool)
        guard[2 : 2 + t, 4 : 4 + f] = False
        assert (buf[guard] == -7.0).all(), "a store left the output view"
    assert seen == {True, False}, "both branches of EVEN"


def test_64_bit_index_path_matches(monkeypatch):
    """The OFFS_64 branch (taken only when an offset can pass 2^31, too large to allocate here) computes
    the same values as the 32-bit one."""
    import tritium.autotune as at

    x = randn(5, 2 * 1100 + 4, scale=3.0)[:, 2 : 2 + 2 * 1100]
    want = silu_and_mul(x)
    monkeypatch.setattr(at, "needs_int64", lambda *views: True)  # what flat_launch asks
    assert torch.equal(silu_and_mul(x), want)


def _check_bit_identical_to_masked(tokens, f, dtype, device):
    """Mask-free (and 32-bit indexed) blocks give exactly the bits of the fully masked 64-bit kernel,
    launched directly so the heuristic cannot drop the mask."""
    import triton

    from tritium.autotune import next_pow2
    from tritium.kernels.activation import _silu_and_mul_kernel

    x = randn(tokens, 2 * f, dtype=dtype, device=device, scale=3.0)
    for config in CONFIGS:
        y = silu_and_mul(x, config=config)
        y0 = torch.empty_like(y)
        _silu_and_mul_kernel[(triton.cdiv(tokens * f, config.kwargs["XBLOCK"]),)](
            x, y0, tokens * f, next_pow2(tokens), F=f, SXT=x.stride(0), SYT=y0.stride(0), EVEN=False, OFFS_64=True, **config.all_kwargs(),
        )
        assert torch.equal(y, y0), config


@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_bit_identical_to_masked_kernel(dtype):
    _check_bit_identical_to_masked(8, 2048, dtype, "cpu")  # EVEN for every config
    _check_bit_identical_to_masked(4, 384, dtype, "cpu")  # EVEN for XBLOCK 512 only, rows spanning programs
    _check_bit_identical_to_masked(5, 1100, dtype, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [1, 16, 256, 4096, 37])
@pytest.mark.parametrize("inter", [3072, 12288, 1000])
def test_gpu_bf16_bit_identical_to_masked_kernel(tokens, inter):
    _check_bit_identical_to_masked(tokens, inter, torch.bfloat16, "cuda")
