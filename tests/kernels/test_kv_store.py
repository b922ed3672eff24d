"""KV-cache store: exact copies into paged caches, -1 holes skipped, every other slot untouched."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tritium.autotune import config_id
from tritium.kernels.kv_store import CONFIGS, INTERPRET_CONFIG, store_kv, store_kv_ref
from tensor_checks import randn

CPU_DTYPES = [torch.float32, torch.float16]


def _kv(t, h, d, dtype, g, layout="packed", device="cpu"):
    """k, v [t, h, d] in one of three layouts: "packed" (slices of a packed qkv tensor, strided rows),
    "contiguous" (separate tensors) or "padded" (heads d + 8 elements apart)."""
    if layout == "packed":
        qkv = randn(t, 4 * h * d, dtype=dtype, generator=g).to(device)  # 2h q heads, then k, then v
        return qkv[:, 2 * h * d : 3 * h * d].view(t, h, d), qkv[:, 3 * h * d :].view(t, h, d)
    if layout == "padded":
        return tuple(randn(t, h, d + 8, dtype=dtype, generator=g).to(device)[..., 4 : 4 + d] for _ in "kv")
    assert layout == "contiguous", layout
    return randn(t, h, d, dtype=dtype, generator=g).to(device), randn(t, h, d, dtype=dtype, generator=g).to(device)


def _slots(t, n_slots, holes, g, dtype):
    """Distinct random slots, with about `holes` of them set to -1."""
    s = torch.randperm(n_slots, generator=g)[:t]
    s[torch.rand(t, generator=g) < holes] = -1
    return s.to(dtype)


def _check(k, v, k_cache, v_cache, slots, **kw):
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    store_kv_ref(k, v, k_ref, v_ref, slots)
    store_kv(k, v, k_cache, v_cache, slots, **kw)
    assert torch.equal(k_cache, k_ref), "k_cache differs from the reference (written, or left untouched)"
    assert torch.equal(v_cache, v_ref), "v_cache differs from the reference (written, or left untouched)"


@given(
    t=st.integers(1, 8),
    h=st.sampled_from([1, 2, 8]),
    d=st.sampled_from([64, 128]),
    block_size=st.sampled_from([16, 32, 256]),
    dtype=st.sampled_from(CPU_DTYPES),
    slot_dtype=st.sampled_from([torch.int32, torch.int64]),
    holes=st.sampled_from([0.0, 0.3, 1.0]),
    layout=st.sampled_from(["packed", "contiguous", "padded"]),
    padded_cache=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_store_matches_reference_exactly(t, h, d, block_size, dtype, slot_dtype, holes, layout, padded_cache, seed):
    # padded: heads d + 8 elements apart in k / v; padded_cache: heads d + 16 apart in the caches (the kernel's
    # general head offset, not the packed one)
    g = torch.Generator().manual_seed(seed)
    num_blocks = 1 + (t + 3) // block_size + 2
    k, v = _kv(t, h, d, dtype, g, layout)
    pad = 16 if padded_cache else 0
    k_cache = randn(num_blocks, block_size, h, d + pad, dtype=dtype, generator=g)[..., pad // 2 : pad // 2 + d]
    v_cache = randn(num_blocks, block_size, h, d + pad, dtype=dtype, generator=g)[..., pad // 2 : pad // 2 + d]
    slots = _slots(t, num_blocks * block_size, holes, g, slot_dtype)
    _check(k, v, k_cache, v_cache, slots)
    # every kept token landed exactly at its slot
    for i, s in enumerate(slots.tolist()):
        if s >= 0:
            assert torch.equal(k_cache[s // block_size, s % block_size], k[i])
            assert torch.equal(v_cache[s // block_size, s % block_size], v[i])


def test_strided_caches_and_layer_slices():
    # one allocation for all layers ([2, layers, blocks, B, H, D]) and a cache with padded rows
    kv = randn(2, 3, 4, 16, 2, 64)
    k, v = randn(10, 2, 64), randn(10, 2, 64)
    slots = torch.tensor([0, 5, -1, 17, 63, 32, -1, 48, 1, 2])
    _check(k, v, kv[0, 1], kv[1, 1], slots)
    padded_k = randn(4, 16, 2, 80)[..., 8:72]
    padded_v = randn(4, 16, 3, 64)[:, :, 1:]
    _check(k, v, padded_k, padded_v, slots)


def test_out_of_range_slots_are_skipped():
    k, v = randn(3, 2, 64), randn(3, 2, 64)
    k_cache, v_cache = randn(2, 16, 2, 64), randn(2, 16, 2, 64)
    k0 = k_cache.clone()
    store_kv(k, v, k_cache, v_cache, torch.tensor([32, 1000, -5]))
    assert torch.equal(k_cache, k0)


def test_non_power_of_two_block_size():
    k, v = randn(6, 1, 64), randn(6, 1, 64)
    _check(k, v, randn(3, 12, 1, 64), randn(3, 12, 1, 64), torch.tensor([0, 11, 12, 35, -1, 23]))


@pytest.mark.parametrize("tokens, d", [(11, 192), (16, 128)], ids=["partial", "even"])
@pytest.mark.parametrize("config", CONFIGS + [INTERPRET_CONFIG], ids=config_id)
def test_every_config(config, tokens, d):
    # 11 x 2 x 192 elements: the last program is partial for every XBLOCK; 16 x 2 x 128 = 4096: full programs
    # only (EVEN, no load mask) for every config but the interpreter's.
    assert (tokens * 2 * d % config.kwargs["XBLOCK"] == 0) == (d == 128 and config is not INTERPRET_CONFIG)
    g = torch.Generator().manual_seed(3)
    k, v = _kv(tokens, 2, d, torch.float16, g)
    k_cache, v_cache = randn(2, 16, 2, d, dtype=torch.float16), randn(2, 16, 2, d, dtype=torch.float16)
    _check(k, v, k_cache, v_cache, _slots(tokens, 32, 0.3, g, torch.int32), config=config)


@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_interpreter_config_over_several_programs(dtype):
    # The interpreter's widest blocks: 3 programs (the last partial) over tokens of 1152 = 3 x 384 columns,
    # so blocks start and end inside tokens.
    g = torch.Generator().manual_seed(4)
    xblock = INTERPRET_CONFIG.kwargs["XBLOCK"]
    t = 2 * xblock // 1152 + 5
    assert 2 * xblock < t * 1152 < 3 * xblock and xblock % 1152
    k, v = _kv(t, 3, 384, dtype, g)
    k_cache, v_cache = randn(20, 16, 3, 384, dtype=dtype, generator=g), randn(20, 16, 3, 384, dtype=dtype, generator=g)
    _check(k, v, k_cache, v_cache, _slots(t, 20 * 16, 0.3, g, torch.int64), config=INTERPRET_CONFIG)


def test_64_bit_index_path_matches(monkeypatch):
    """The OFFS_64 branch (taken only when an offset into k or v can pass 2^31, too large to allocate here)
    writes the same slots as the reference."""
    import tritium.autotune as at

    g = torch.Generator().manual_seed(5)
    k, v = _kv(13, 2, 64, torch.float32, g, "padded")
    k_cache, v_cache = randn(4, 16, 2, 64, generator=g), randn(4, 16, 2, 64, generator=g)
    monkeypatch.setattr(at, "needs_int64", lambda *views: True)  # what flat_launch asks
    _check(k, v, k_cache, v_cache, _slots(13, 64, 0.3, g, torch.int32))


def test_empty_input():
    k_cache = randn(1, 16, 2, 64)
    store_kv(torch.empty(0, 2, 64), torch.empty(0, 2, 64), k_cache, k_cache.clone(), torch.empty(0, dtype=torch.int32))


def test_bad_inputs_raise():
    k, v, kc, vc, s = randn(3, 2, 64), randn(3, 2, 64), randn(2, 16, 2, 64), randn(2, 16, 2, 64), torch.arange(3)
    with pytest.raises(ValueError, match="4-D"):
        store_kv(k, v, kc[0], vc, s)
    with pytest.raises(ValueError, match="dtype"):
        store_kv(k, v, kc.half(), vc.half(), s)
    with pytest.raises(ValueError, match="dtype"):
        store_kv(k.to(torch.int32), v.to(torch.int32), kc.to(torch.int32), vc.to(torch.int32), s)
    with pytest.raises(ValueError, match="v "):
        store_kv(k, randn(3, 1, 64), kc, vc, s)
    with pytest.raises(ValueError, match="heads"):
        store_kv(k, v, randn(2, 16, 4, 64), randn(2, 16, 4, 64), s)
    with pytest.raises(ValueError, match="v_cache"):
        store_kv(k, v, kc, randn(3, 16, 2, 64), s)
    with pytest.raises(ValueError, match="slot_mapping"):
        store_kv(k, v, kc, vc, s.float())
    with pytest.raises(ValueError, match="slot_mapping"):
        store_kv(k, v, kc, vc, torch.arange(4))
    with pytest.raises(ValueError, match="contiguous last"):
        store_kv(randn(3, 64, 2).transpose(1, 2), v, kc, vc, s)


# ---- GPU: bf16 at Qwen3 shapes (8 kv heads, head_dim 128), paged caches of 16 and 256 slots per block ----

@pytest.mark.gpu
@pytest.mark.parametrize("block_size", [16, 256])
@pytest.mark.parametrize("tokens", [1, 16, 256, 4096])
def test_gpu_bf16(block_size, tokens):
    dt, h, d = torch.bfloat16, 8, 128
    g = torch.Generator().manual_seed(tokens)
    num_blocks = 2 * tokens // block_size + 4
    k, v = _kv(tokens, h, d, dt, g, device="cuda")
    k_cache = randn(num_blocks, block_size, h, d, dtype=dt, device="cuda")
    v_cache = randn(num_blocks, block_size, h, d, dtype=dt, device="cuda")
    slots = _slots(tokens, num_blocks * block_size, 0.2, g, torch.int32).cuda()
    _check(k, v, k_cache, v_cache, slots)
    for config in CONFIGS:
        _check(k, v, k_cache, v_cache, slots, config=config)


@pytest.mark.gpu
def test_gpu_in_cuda_graph():
    dt, h, d = torch.bfloat16, 8, 128
    k, v = randn(16, h, d, dtype=dt, device="cuda"), randn(16, h, d, dtype=dt, device="cuda")
    k_cache, v_cache = randn(8, 16, h, d, dtype=dt, device="cuda"), randn(8, 16, h, d, dtype=dt, device="cuda")
    slots = torch.randperm(128, device="cuda")[:16].to(torch.int32)
    slots[3] = -1
    store_kv(k, v, k_cache, v_cache, slots)  # tune outside the graph
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        store_kv(k, v, k_cache, v_cache, slots)
    k.copy_(randn(16, h, d, dtype=dt, device="cuda"))
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    store_kv_ref(k, v, k_ref, v_ref, slots)
    graph.replay()
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)
