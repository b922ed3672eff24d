"""RMSNorm kernels (plain, add+norm, per-head) against the fp32 reference and transformers' Qwen3RMSNorm."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tritium.autotune import config_id, next_pow2
from tritium.kernels.rmsnorm import (
    CONFIGS,
    HEAD_CONFIGS,
    HEAD_INTERPRET_CONFIG,
    HEURISTICS,
    INTERPRET_CONFIG,
    add_rms_norm,
    add_rms_norm_ref,
    head_rms_norm,
    head_rms_norm_ref,
    rms_norm,
    rms_norm_ref,
)
from tensor_checks import assert_close, randn

CPU_DTYPES = [torch.float32, torch.float16]
HIDDEN = [1000, 1536, 2560, 5120, 7, 64]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _hf_norm(weight, eps):
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

    m = Qwen3RMSNorm(weight.shape[0], eps=eps).to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        m.weight.copy_(weight)
    return m


def _rows(t, h, dtype, g, scale=1.0, pad=0):
    """[t, h] rows, as a column slice of a wider buffer when pad > 0 (row stride h + pad)."""
    return randn(t, h + pad, dtype=dtype, generator=g, scale=scale)[:, pad // 2 : pad // 2 + h]


@given(
    t=st.integers(1, 6),
    h=st.sampled_from(HIDDEN),
    dtype=st.sampled_from(CPU_DTYPES),
    eps=st.sampled_from([1e-6, 1e-5, 0.5]),
    scale=st.sampled_from([0.02, 1.0, 40.0]),
    pad=st.sampled_from([0, 6]),
    seed=st.integers(0, 2**16),
)
def test_rms_norm_matches_reference(t, h, dtype, eps, scale, pad, seed):
    g = _gen(seed)
    x = _rows(t, h, dtype, g, scale, pad)
    w = randn(h, dtype=dtype, generator=g)
    y = rms_norm(x, w, eps)
    assert y.dtype == dtype and y.shape == (t, h)
    assert_close(y, rms_norm_ref(x, w, eps).float(), dtype)


@given(
    t=st.integers(1, 6),
    h=st.sampled_from(HIDDEN),
    dtype=st.sampled_from(CPU_DTYPES),
    in_place=st.booleans(),
    pad=st.sampled_from([0, 6]),
    seed=st.integers(0, 2**16),
)
def test_add_rms_norm_matches_reference(t, h, dtype, in_place, pad, seed):
    g = _gen(seed)
    x = _rows(t, h, dtype, g, 1.0, pad)
    r = _rows(t, h, dtype, g, 3.0, pad)
    w = randn(h, dtype=dtype, generator=g)
    y_ref, r_ref = add_rms_norm_ref(x, r, w, 1e-6)
    y, r_new = add_rms_norm(x, r, w, 1e-6, residual_out=r if in_place else None)
    assert torch.equal(r_new, r_ref), "the new residual is rnd(x + residual), exactly"
    if in_place:
        assert r_new.data_ptr() == r.data_ptr() and torch.equal(r, r_ref)
    assert_close(y, y_ref.float(), dtype)
    # y is the norm of the rounded residual, as transformers computes it from the stored stream
    assert_close(y, _hf_norm(w, 1e-6)(r_ref).float(), dtype)


@given(
    t=st.integers(1, 4),
    kv_heads=st.sampled_from([1, 2, 4]),
    group=st.sampled_from([1, 2, 3]),
    d=st.sampled_from([64, 128]),
    dtype=st.sampled_from(CPU_DTYPES),
    in_place=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_head_rms_norm_on_packed_qkv(t, kv_heads, group, d, dtype, in_place, seed):
    g = _gen(seed)
    hq = kv_heads * group
    qkv = randn(t, (hq + 2 * kv_heads) * d, dtype=dtype, generator=g)
    q = qkv[:, : hq * d].view(t, hq, d)
    k = qkv[:, hq * d : (hq + kv_heads) * d].view(t, kv_heads, d)
    v_before = qkv[:, (hq + kv_heads) * d :].clone()
    w = randn(d, dtype=dtype, generator=g)
    for x in (q, k):
        ref = head_rms_norm_ref(x, w, 1e-6)
        hf = _hf_norm(w, 1e-6)(x)
        y = head_rms_norm(x, w, 1e-6, out=x if in_place else None)
        assert_close(y, ref.float(), dtype)
        assert_close(y, hf.float(), dtype)
        if in_place:
            assert y.data_ptr() == x.data_ptr()
    assert torch.equal(qkv[:, (hq + kv_heads) * d :], v_before), "v must be untouched"


def test_matches_transformers_module_fp32():
    x = randn(4, 1536)
    w = randn(1536)
    assert_close(rms_norm(x, w, 1e-6), _hf_norm(w, 1e-6)(x))


@pytest.mark.parametrize("config", CONFIGS + [INTERPRET_CONFIG], ids=config_id)
@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_every_row_config(config, dtype):
    # 5 rows: a partial last tile for ROWS = 2 and 4; H = 1000 masks the tail of BLOCK_N = 1024.
    x, r, w = randn(5, 1000, dtype=dtype), randn(5, 1000, dtype=dtype), randn(1000, dtype=dtype)
    assert_close(rms_norm(x, w, 1e-6, config=config), rms_norm_ref(x, w, 1e-6).float(), dtype)
    y, r_new = add_rms_norm(x, r, w, 1e-6, config=config)
    y_ref, r_ref = add_rms_norm_ref(x, r, w, 1e-6)
    assert torch.equal(r_new, r_ref)
    assert_close(y, y_ref.float(), dtype)


@pytest.mark.parametrize("config", HEAD_CONFIGS + [HEAD_INTERPRET_CONFIG], ids=config_id)
def test_every_head_config(config):
    x = randn(3, 13, 64)[:, 1:12]  # 33 rows, strided: partial tiles for every ROWS
    w = randn(64)
    assert_close(head_rms_norm(x, w, 1e-6, config=config), head_rms_norm_ref(x, w, 1e-6))


@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_interpreter_configs_over_several_tiles(dtype):
    # The interpreter's widest tiles (ROWS rows / head vectors) over 3 programs, the last one partial.
    t = 2 * INTERPRET_CONFIG.kwargs["ROWS"] + 5
    x, r = _rows(t, 1000, dtype, _gen(5), 2.0, pad=6), _rows(t, 1000, dtype, _gen(6), 1.0, pad=6)
    w = randn(1000, dtype=dtype, generator=_gen(7))
    assert_close(rms_norm(x, w, 1e-6, config=INTERPRET_CONFIG), rms_norm_ref(x, w, 1e-6).float(), dtype)
    y_ref, r_ref = add_rms_norm_ref(x, r, w, 1e-6)
    y, r_new = add_rms_norm(x, r, w, 1e-6, residual_out=r, config=INTERPRET_CONFIG)
    assert torch.equal(r_new, r_ref)
    assert_close(y, y_ref.float(), dtype)
    heads = randn(t, 7, 64, dtype=dtype, generator=_gen(8))[:, 1:6]  # t x 5 strided head vectors
    assert 2 * HEAD_INTERPRET_CONFIG.kwargs["ROWS"] < t * 5 < 3 * HEAD_INTERPRET_CONFIG.kwargs["ROWS"]
    hw = randn(64, dtype=dtype, generator=_gen(9))
    ref = head_rms_norm_ref(heads, hw, 1e-6)
    assert_close(head_rms_norm(heads, hw, 1e-6, out=heads, config=HEAD_INTERPRET_CONFIG), ref.float(), dtype)


def test_out_buffers_and_aliasing():
    x, r, w = randn(3, 1000), randn(3, 1000), randn(1000)
    out = torch.empty(3, 1024)[:, :1000]  # a strided static buffer
    assert rms_norm(x, w, 1e-6, out=out) is out
    assert_close(out, rms_norm_ref(x, w, 1e-6))
    y_ref, r_ref = add_rms_norm_ref(x, r, w, 1e-6)
    y, r_new = add_rms_norm(x, r, w, 1e-6, out=x, residual_out=r)  # fully in place
    assert y is x and r_new is r
    assert torch.equal(r, r_ref)
    assert_close(x, y_ref)


def test_empty_input():
    x = torch.empty(0, 1000)
    assert rms_norm(x, randn(1000), 1e-6).shape == (0, 1000)
    assert head_rms_norm(torch.empty(0, 4, 64), randn(64), 1e-6).shape == (0, 4, 64)


def test_bad_inputs_raise():
    x, w = randn(4, 64), randn(64)
    with pytest.raises(ValueError, match="dtype"):
        rms_norm(x.to(torch.int32), w, 1e-6)
    with pytest.raises(ValueError, match="weight"):
        rms_norm(x, randn(63), 1e-6)
    with pytest.raises(ValueError, match="contiguous last"):
        rms_norm(randn(64, 4).t(), w, 1e-6)
    with pytest.raises(ValueError, match="2-D"):
        rms_norm(randn(64), w, 1e-6)
    with pytest.raises(ValueError, match="out"):
        rms_norm(x, w, 1e-6, out=torch.empty(4, 32))
    with pytest.raises(ValueError, match="out"):
        rms_norm(x, w, 1e-6, out=torch.empty(4, 64, dtype=torch.float16))
    with pytest.raises(ValueError, match="residual"):
        add_rms_norm(x, randn(3, 64), w, 1e-6)
    with pytest.raises(ValueError, match="residual"):
        add_rms_norm(x, randn(4, 64, dtype=torch.float16), w, 1e-6)
    o = torch.empty(4, 64)
    with pytest.raises(ValueError, match="different"):
        add_rms_norm(x, randn(4, 64), w, 1e-6, out=o, residual_out=o)
    with pytest.raises(ValueError, match="3-D"):
        head_rms_norm(x, w, 1e-6)
    with pytest.raises(ValueError, match="weight"):
        head_rms_norm(randn(2, 4, 128), w, 1e-6)
    with pytest.raises(ValueError, match="eps"):
        rms_norm(x, w, -1.0)


# ---- GPU: bf16 at Qwen3-0.6B / 8B shapes (hidden 1024 / 4096; 16 / 32 q heads, 8 kv heads, d 128) ----

@pytest.mark.gpu
@pytest.mark.parametrize("hidden", [1024, 4096])
@pytest.mark.parametrize("tokens", [1, 16, 256, 4096])
def test_gpu_bf16_row_norms(hidden, tokens):
    dt = torch.bfloat16
    x, r = randn(tokens, hidden, dtype=dt, device="cuda"), randn(tokens, hidden, dtype=dt, device="cuda")
    w = randn(hidden, dtype=dt, device="cuda", scale=0.1) + 1
    assert_close(rms_norm(x, w, 1e-6), rms_norm_ref(x, w, 1e-6).float(), dt)
    assert_close(rms_norm(x, w, 1e-6), _hf_norm(w, 1e-6)(x).float(), dt)
    y_ref, r_ref = add_rms_norm_ref(x, r, w, 1e-6)
    y, r_new = add_rms_norm(x, r, w, 1e-6, residual_out=r)
    assert torch.equal(r_new, r_ref)
    assert_close(y, y_ref.float(), dt)
    for config in CONFIGS:
        assert_close(rms_norm(x, w, 1e-6, config=config), rms_norm_ref(x, w, 1e-6).float(), dt)


@pytest.mark.gpu
@pytest.mark.parametrize("heads,kv_heads", [(16, 8), (32, 8)])
@pytest.mark.parametrize("tokens", [1, 16, 4096])
def test_gpu_bf16_head_norm(heads, kv_heads, tokens):
    dt, d = torch.bfloat16, 128
    qkv = randn(tokens, (heads + 2 * kv_heads) * d, dtype=dt, device="cuda")
    q = qkv[:, : heads * d].view(tokens, heads, d)
    w = randn(d, dtype=dt, device="cuda", scale=0.1) + 1
    ref = head_rms_norm_ref(q, w, 1e-6)
    hf = _hf_norm(w, 1e-6)(q)
    for config in HEAD_CONFIGS:
        assert_close(head_rms_norm(q, w, 1e-6, config=config), ref.float(), dt)
    head_rms_norm(q, w, 1e-6, out=q)
    assert_close(q, hf.float(), dt)


@pytest.mark.gpu
def test_gpu_add_rms_norm_in_cuda_graph():
    dt = torch.bfloat16
    x, r = randn(16, 1024, dtype=dt, device="cuda"), randn(16, 1024, dtype=dt, device="cuda")
    w = randn(1024, dtype=dt, device="cuda")
    out = torch.empty_like(x)
    r0 = r.clone()
    add_rms_norm(x, r, w, 1e-6, out=out, residual_out=r)  # tune outside the graph
    r.copy_(r0)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        add_rms_norm(x, r, w, 1e-6, out=out, residual_out=r)
    r.copy_(r0)
    graph.replay()
    y_ref, r_ref = add_rms_norm_ref(x, r0, w, 1e-6)
    assert torch.equal(r, r_ref)
    assert_close(out, y_ref.float(), dt)


# ---- mask-free tiles: EVEN_N (N == BLOCK_N) and EVEN_ROWS (rows % ROWS == 0), both branches, every config ----

# (EVEN_N, EVEN_ROWS) pairs a test must reach, by whether ROWS > 1 (one-row tiles are always full)
_EXPECTED_FLAGS = {
    True: {(True, True), (True, False), (False, True), (False, False)},
    False: {(True, True), (False, True)},
}


def _flags(n_rows, n_cols, rows):
    a = {"n_rows": n_rows, "N": n_cols, "BLOCK_N": next_pow2(n_cols), "ROWS": rows}
    return HEURISTICS["EVEN_N"](a), HEURISTICS["EVEN_ROWS"](a)


def _in_padded(t, h, dtype, g, fill):
    """A [t, h] view in the middle of a larger buffer (row stride h + 8, 3 guard rows above and below),
    the rest set to `fill`, so a write past the view shows."""
    buf = torch.full((t + 6, h + 8), fill, dtype=dtype)
    return buf, buf[3 : 3 + t, 4 : 4 + h]


def _guard_intact(buf, view, fill):
    m = torch.ones_like(buf, dtype=torch.bool)
    m[3 : 3 + view.shape[0], 4 : 4 + view.shape[1]] = False
    return bool((buf[m] == fill).all())


@pytest.mark.parametrize("config", CONFIGS + [INTERPRET_CONFIG], ids=config_id)
@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_every_row_config_even_and_ragged_tiles(config, dtype):
    rows = config.kwargs["ROWS"]
    seen = set()
    for t in (2 * rows, 2 * rows + 1):  # full tiles only / a partial last tile
        for h in (256, 200):  # N == BLOCK_N / N < BLOCK_N (not a power of two)
            seen.add(_flags(t, h, rows))
            g = _gen(t * 1000 + h)
            x, w = randn(t, h, dtype=dtype, generator=g), randn(h, dtype=dtype, generator=g)
            r0 = randn(t, h, dtype=dtype, generator=g, scale=2.0)
            ybuf, y = _in_padded(t, h, dtype, g, -7.0)
            assert rms_norm(x, w, 1e-6, out=y, config=config) is y
            assert_close(y, rms_norm_ref(x, w, 1e-6).float(), dtype)
            assert _guard_intact(ybuf, y, -7.0), "a store left the output view"
            # add+norm in place on a strided residual: every row updated exactly once, nothing outside
            rbuf, r = _in_padded(t, h, dtype, g, -7.0)
            r.copy_(r0)
            y_ref, r_ref = add_rms_norm_ref(x, r0, w, 1e-6)
            y2, r_new = add_rms_norm(x, r, w, 1e-6, residual_out=r, config=config)
            assert r_new is r and torch.equal(r, r_ref)
            assert _guard_intact(rbuf, r, -7.0)
            assert_close(y2, y_ref.float(), dtype)
    assert seen == _EXPECTED_FLAGS[rows > 1], "both branches of each flag (ROWS = 1 tiles are always full)"


@pytest.mark.parametrize("config", HEAD_CONFIGS + [HEAD_INTERPRET_CONFIG], ids=config_id)
def test_every_head_config_even_and_ragged_tiles(config):
    rows = config.kwargs["ROWS"]
    seen = set()
    # 4 heads over 2*ROWS rows (full tiles; a power-of-two head count) / 3 heads (a partial last tile and a
    # head count that is not a power of two); d = 64 (N == BLOCK_N) / 96 (N < BLOCK_N)
    for heads, t in ((4, max(1, 2 * rows // 4)), (3, rows + 1)):
        for d in (64, 96):
            seen.add(_flags(t * heads, d, rows))
            g = _gen(heads * 100 + d)
            packed = randn(t, (heads + 3) * d, generator=g)  # q | k | v-like layout: q is a strided view
            q = packed[:, d : (heads + 1) * d].view(t, heads, d)
            before = packed.clone()
            w = randn(d, generator=g)
            ref = head_rms_norm_ref(q, w, 1e-6)
            assert head_rms_norm(q, w, 1e-6, out=q, config=config) is q
            assert_close(q, ref)
            assert torch.equal(packed[:, :d], before[:, :d]) and torch.equal(
                packed[:, (heads + 1) * d :], before[:, (heads + 1) * d :]), "a store left the q slice"
    assert seen == _EXPECTED_FLAGS[rows > 1], "both branches of each flag (ROWS = 1 tiles are always full)"


def test_64_bit_index_path_matches(monkeypatch):
    """The OFFS_64 branch (taken only when an offset can pass 2^31, too large to allocate here) computes
    the same values as the 32-bit one."""
    import tritium.kernels.rmsnorm as rm

    x, r, w = randn(9, 200), randn(9, 200), randn(200)
    heads, hw = randn(5, 7, 96)[:, 1:6], randn(96)
    want = rms_norm(x, w, 1e-6), add_rms_norm(x, r, w, 1e-6), head_rms_norm(heads, hw, 1e-6)
    monkeypatch.setattr(rm, "needs_int64", lambda *views: True)
    got = rms_norm(x, w, 1e-6), add_rms_norm(x, r, w, 1e-6), head_rms_norm(heads, hw, 1e-6)
    assert torch.equal(got[0], want[0]) and torch.equal(got[2], want[2])
    assert torch.equal(got[1][0], want[1][0]) and torch.equal(got[1][1], want[1][1])


def _rows_masked_like_before(x, r, w, y, ro, config, has_residual):
    """The kernel with every mask kept and 64-bit index math (the code before mask-free tiles), launched
    directly so the heuristics cannot drop the masks."""
    import triton

    from tritium.kernels.rmsnorm import _rms_norm_kernel

    t, h = x.shape
    _rms_norm_kernel[(triton.cdiv(t, config.kwargs["ROWS"]),)](
        x, r, w, y, ro, t, next_pow2(t), N=h, SXT=x.stride(0), SXH=0, SRT=r.stride(0), SYT=y.stride(0), SYH=0,
        SROT=ro.stride(0), EPS=1e-6, HAS_RESIDUAL=has_residual, NH=1, BLOCK_N=next_pow2(h), EVEN_N=False, EVEN_ROWS=False, OFFS_64=True,
        **config.all_kwargs(),
    )


def _heads_masked_like_before(q, w, y, config):
    import triton

    from tritium.kernels.rmsnorm import _rms_norm_kernel

    t, nh, d = q.shape
    _rms_norm_kernel[(triton.cdiv(t * nh, config.kwargs["ROWS"]),)](
        q, q, w, y, y, t * nh, next_pow2(t * nh), N=d, SXT=q.stride(0), SXH=q.stride(1), SRT=0, SYT=y.stride(0),
        SYH=y.stride(1), SROT=0, EPS=1e-6, HAS_RESIDUAL=False, NH=nh, BLOCK_N=next_pow2(d), EVEN_N=False, EVEN_ROWS=False, OFFS_64=True,
        **config.all_kwargs(),
    )


def _check_bit_identical_to_masked(tokens, hidden, heads, d, dtype, device, row_configs, head_configs):
    """Mask-free (and 32-bit indexed) tiles give exactly the bits of the fully masked 64-bit kernel."""
    x, r = randn(tokens, hidden, dtype=dtype, device=device), randn(tokens, hidden, dtype=dtype, device=device)
    w = randn(hidden, dtype=dtype, device=device, scale=0.1) + 1
    for config in row_configs:
        y, y0 = torch.empty_like(x), torch.empty_like(x)
        rms_norm(x, w, 1e-6, out=y, config=config)
        _rows_masked_like_before(x, x, w, y0, y0, config, False)
        assert torch.equal(y, y0), config
        ro, ro0 = torch.empty_like(x), torch.empty_like(x)
        add_rms_norm(x, r, w, 1e-6, out=y, residual_out=ro, config=config)
        _rows_masked_like_before(x, r, w, y0, ro0, config, True)
        assert torch.equal(y, y0) and torch.equal(ro, ro0), config
    qkv = randn(tokens, (heads + 2 * 8) * d, dtype=dtype, device=device)
    q = qkv[:, : heads * d].view(tokens, heads, d)
    wd = randn(d, dtype=dtype, device=device, scale=0.1) + 1
    for config in head_configs:
        y, y0 = torch.empty_like(q), torch.empty_like(q)
        head_rms_norm(q, wd, 1e-6, out=y, config=config)
        _heads_masked_like_before(q, wd, y0, config)
        assert torch.equal(y, y0), config


@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_bit_identical_to_masked_kernel(dtype):
    _check_bit_identical_to_masked(9, 256, 4, 64, dtype, "cpu", CONFIGS, HEAD_CONFIGS)
    _check_bit_identical_to_masked(8, 200, 3, 96, dtype, "cpu", CONFIGS[:3], HEAD_CONFIGS[:2])


@pytest.mark.gpu
@pytest.mark.parametrize("tokens,hidden,heads", [(4096, 1024, 16), (256, 4096, 32), (16, 1024, 16), (256, 1024, 16),
                                                 (1, 1024, 16), (37, 1000, 32)])
def test_gpu_bf16_bit_identical_to_masked_kernel(tokens, hidden, heads):
    _check_bit_identical_to_masked(tokens, hidden, heads, 128, torch.bfloat16, "cuda", CONFIGS, HEAD_CONFIGS)
