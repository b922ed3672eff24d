"""RoPE (and q/k-norm + RoPE) with the KV-cache store in the same launch: q and k come out as without the store,
and the caches as store_kv_ref of the rotated k and the given v (an exact copy; -1 and past-the-cache slots
skipped, every other cache row untouched)."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tritium.kernels.kv_store import store_kv_ref
from tritium.kernels.rope import CONFIGS, INTERPRET_CONFIG, apply_rope, qk_norm_rope, rope_cos_sin
from tensor_checks import randn

MAX_POS = 40960


def _case(t, hq, hkv, d, block, dtype, seed, device="cpu"):
    """Packed qkv views, positions, norm weights, random caches and distinct slots with -1 and one past the end."""
    g = torch.Generator().manual_seed(seed)
    qkv = randn(t, (hq + 2 * hkv) * d, dtype=dtype, generator=g).to(device)
    q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
    q, k, v = q.view(t, hq, d), k.view(t, hkv, d), v.view(t, hkv, d)
    num_blocks = t // block + 2
    caches = [randn(num_blocks, block, hkv, d, dtype=dtype, generator=g).to(device) for _ in range(2)]
    slots = torch.randperm(num_blocks * block, generator=g)[:t]
    slots[torch.rand(t, generator=g) < 0.25] = -1
    if t > 1:
        slots[-1] = num_blocks * block  # past the cache: skipped
    pos = torch.randint(0, MAX_POS, (t,), generator=g).to(device)
    w = [(randn(d, dtype=dtype, generator=g, scale=0.1) + 1).to(device) for _ in range(2)]
    return q, k, v, caches, slots.to(device), pos, w


def _run(norm, q, k, v, caches, slots, pos, w, cs, config=None):
    """(q, k, k_cache, v_cache) after the fused launch, and the same from rope without the store + store_kv_ref."""
    q2, k2, kc2, vc2 = q.clone(), k.clone(), caches[0].clone(), caches[1].clone()
    cache = (v, caches[0], caches[1], slots)
    if norm:
        qk_norm_rope(q, k, w[0], w[1], 1e-6, pos, cs, cache=cache, config=config)
        qk_norm_rope(q2, k2, w[0], w[1], 1e-6, pos, cs, config=config)
    else:
        apply_rope(q, k, pos, cs, cache=cache, config=config)
        apply_rope(q2, k2, pos, cs, config=config)
    store_kv_ref(k2, v, kc2, vc2, slots)
    return (q, k, caches[0], caches[1]), (q2, k2, kc2, vc2)


@given(
    t=st.integers(1, 6),
    kv_heads=st.sampled_from([1, 2]),
    group=st.sampled_from([1, 3]),
    d=st.sampled_from([64, 128]),
    block=st.sampled_from([1, 2, 16]),
    dtype=st.sampled_from([torch.float32, torch.float16]),
    norm=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_store_in_the_rope_launch_equals_rope_then_store(t, kv_heads, group, d, block, dtype, norm, seed):
    q, k, v, caches, slots, pos, w = _case(t, kv_heads * group, kv_heads, d, block, dtype, seed)
    fused, ref = _run(norm, q, k, v, caches, slots, pos, w, rope_cos_sin(d, MAX_POS, 1e6))
    for a, b in zip(fused, ref):
        assert torch.equal(a, b)


@pytest.mark.parametrize("config", CONFIGS + [INTERPRET_CONFIG], ids=lambda c: str(c.kwargs))
def test_every_config_stores(config):
    q, k, v, caches, slots, pos, w = _case(5, 6, 2, 64, 2, torch.float32, 3)
    fused, ref = _run(True, q, k, v, caches, slots, pos, w, rope_cos_sin(64, MAX_POS, 1e6), config=config)
    for a, b in zip(fused, ref):
        assert torch.equal(a, b)


def test_bad_cache_arguments_are_named():
    q, k, v, caches, slots, pos, w = _case(3, 2, 1, 64, 16, torch.float32, 4)
    cs = rope_cos_sin(64, MAX_POS, 1e6)
    with pytest.raises(ValueError, match="cache must be"):
        apply_rope(q, k, pos, cs, cache=(v, caches[0]))
    with pytest.raises(ValueError, match="slot_mapping"):
        apply_rope(q, k, pos, cs, cache=(v, caches[0], caches[1], slots[:2]))


@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [1, 7, 256, 4097])
@pytest.mark.parametrize("norm", [False, True], ids=["rope", "norm_rope"])
def test_gpu_bf16_store_in_the_rope_launch(tokens, norm):
    q, k, v, caches, slots, pos, w = _case(tokens, 16, 8, 128, 256, torch.bfloat16, tokens, device="cuda")
    fused, ref = _run(norm, q, k, v, caches, slots, pos, w, rope_cos_sin(128, MAX_POS, 1e6, device="cuda"))
    for a, b in zip(fused, ref):
        assert torch.equal(a, b)
