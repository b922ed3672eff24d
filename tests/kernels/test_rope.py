"""RoPE and fused q/k-norm + RoPE against the fp32 reference and transformers' Qwen3 rotary embedding."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tritium.autotune import config_id
from tritium.kernels.rmsnorm import head_rms_norm_ref
from tritium.kernels.rope import (
    CONFIGS,
    INTERPRET_CONFIG,
    apply_rope,
    apply_rope_ref,
    qk_norm_rope,
    qk_norm_rope_ref,
    rope_cos_sin,
)
from tensor_checks import assert_close, randn

CPU_DTYPES = [torch.float32, torch.float16]
MAX_POS = 40960  # Qwen3's max_position_embeddings


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _hf_rope(d, theta, max_pos=MAX_POS):
    from transformers import Qwen3Config
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

    cfg = Qwen3Config(
        hidden_size=256, num_attention_heads=2, num_key_value_heads=1, head_dim=d, max_position_embeddings=max_pos,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
    )
    assert cfg.rope_parameters["rope_theta"] == theta
    return Qwen3RotaryEmbedding(cfg)


def _hf_apply(q, k, positions, d, theta):
    """transformers' cos/sin and apply_rotary_pos_emb on [T, H, D] tensors (batch of one)."""
    from transformers.models.qwen3.modeling_qwen3 import apply_rotary_pos_emb

    emb = _hf_rope(d, theta).to(q.device)
    cos, sin = emb(q, positions.long()[None])
    qo, ko = apply_rotary_pos_emb(q[None], k[None], cos, sin, unsqueeze_dim=2)
    return qo[0], ko[0]


def _qk(t, hq, hkv, d, dtype, g, packed, device="cpu"):
    """q [t, hq, d], k [t, hkv, d]: slices of one packed qkv tensor (strided) or separate contiguous ones."""
    if packed:
        qkv = randn(t, (hq + 2 * hkv) * d, dtype=dtype, generator=g).to(device)
        return qkv[:, : hq * d].view(t, hq, d), qkv[:, hq * d : (hq + hkv) * d].view(t, hkv, d)
    return randn(t, hq, d, dtype=dtype, generator=g).to(device), randn(t, hkv, d, dtype=dtype, generator=g).to(device)


def _positions(t, g, large):
    hi = MAX_POS if large else 64
    p = torch.randint(0, hi, (t,), generator=g)
    if large:
        p[0] = MAX_POS - 1
    return p


@pytest.mark.parametrize("d,theta", [(64, 1e4), (128, 1e6), (128, 5e5)])
def test_cos_sin_cache_is_transformers(d, theta):
    cs = rope_cos_sin(d, MAX_POS, theta)
    assert cs.shape == (MAX_POS, d) and cs.dtype == torch.float32
    pos = torch.tensor([0, 1, 7, 1000, 32767, MAX_POS - 1])
    cos, sin = _hf_rope(d, theta)(torch.zeros(1, dtype=torch.float32), pos[None])
    # transformers repeats each half; our cache holds cos in the first half and sin in the second
    assert_close(cs[pos, : d // 2], cos[0, :, : d // 2])
    assert_close(cs[pos, d // 2 :], sin[0, :, d // 2 :])
    assert torch.equal(cos[0, :, : d // 2], cos[0, :, d // 2 :])


@given(
    t=st.integers(1, 5),
    kv_heads=st.sampled_from([1, 2, 4]),
    group=st.sampled_from([1, 2, 3, 4]),
    d=st.sampled_from([64, 128, 96]),
    theta=st.sampled_from([1e4, 1e6]),
    dtype=st.sampled_from(CPU_DTYPES),
    packed=st.booleans(),
    large=st.booleans(),
    pos_dtype=st.sampled_from([torch.int32, torch.int64]),
    seed=st.integers(0, 2**16),
)
def test_apply_rope_matches_reference_and_transformers(t, kv_heads, group, d, theta, dtype, packed, large, pos_dtype, seed):
    g = _gen(seed)
    q, k = _qk(t, kv_heads * group, kv_heads, d, dtype, g, packed)
    pos = _positions(t, g, large).to(pos_dtype)
    cs = rope_cos_sin(d, MAX_POS, theta)
    q_ref, k_ref = apply_rope_ref(q, k, pos, cs)
    q_hf, k_hf = _hf_apply(q.float(), k.float(), pos, d, theta)
    apply_rope(q, k, pos, cs)
    assert_close(q, q_ref.float(), dtype)
    assert_close(k, k_ref.float(), dtype)
    assert_close(q, q_hf, dtype)
    assert_close(k, k_hf, dtype)


@given(
    t=st.integers(1, 4),
    kv_heads=st.sampled_from([1, 2, 8]),
    group=st.sampled_from([1, 2, 4]),
    d=st.sampled_from([64, 128]),
    dtype=st.sampled_from(CPU_DTYPES),
    packed=st.booleans(),
    eps=st.sampled_from([1e-6, 1e-2]),
    seed=st.integers(0, 2**16),
)
def test_qk_norm_rope_matches_reference_and_transformers(t, kv_heads, group, d, dtype, packed, eps, seed):
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

    g = _gen(seed)
    q, k = _qk(t, kv_heads * group, kv_heads, d, dtype, g, packed)
    q = q * 5  # norm must undo the scale
    qw, kw = randn(d, dtype=dtype, generator=g), randn(d, dtype=dtype, generator=g)
    pos = _positions(t, g, large=True)
    cs = rope_cos_sin(d, MAX_POS, 1e6)
    q_ref, k_ref = qk_norm_rope_ref(q, k, qw, kw, eps, pos, cs)
    norms = []
    for w in (qw, kw):
        m = Qwen3RMSNorm(d, eps=eps).to(dtype)
        with torch.no_grad():
            m.weight.copy_(w)
        norms.append(m)
    q_hf, k_hf = _hf_apply(norms[0](q).float(), norms[1](k).float(), pos, d, 1e6)
    qk_norm_rope(q, k, qw, kw, eps, pos, cs)
    assert_close(q, q_ref.float(), dtype)
    assert_close(k, k_ref.float(), dtype)
    assert_close(q, q_hf, dtype)
    assert_close(k, k_hf, dtype)


def test_rope_properties_fp32():
    q, k = randn(4, 6, 128), randn(4, 2, 128)
    cs = rope_cos_sin(128, MAX_POS, 1e6)
    pos = torch.tensor([0, 3, 20000, MAX_POS - 1])
    q0, k0 = q.clone(), k.clone()
    apply_rope(q, k, pos, cs)
    # a rotation: position 0 is the identity and every head vector keeps its length
    assert_close(q[0], q0[0])
    assert_close(k[0], k0[0])
    assert_close(q.norm(dim=-1), q0.norm(dim=-1))
    assert_close(k.norm(dim=-1), k0.norm(dim=-1))
    # relative positions: <rope(a, p + 11), rope(b, p)> does not depend on p
    a, b = randn(1, 1, 128).expand(3, 1, 128).clone(), randn(1, 1, 128).expand(3, 1, 128).clone()
    base = torch.tensor([5, 777, 39000])
    apply_rope(a, torch.empty(3, 0, 128), base + 11, cs)
    apply_rope(b, torch.empty(3, 0, 128), base, cs)
    dots = (a * b).sum(-1).flatten()
    # fp32 angles p * f (as transformers forms them) carry ~p * 2^-24 rad of error at p ~ 39000
    assert_close(dots, dots[:1].expand(3), scale=200)


def test_out_of_range_positions_are_clamped():
    cs = rope_cos_sin(64, 100, 1e4)
    q, k = randn(2, 2, 64), randn(2, 1, 64)
    q2, k2 = q.clone(), k.clone()
    apply_rope(q, k, torch.tensor([150, -3]), cs)
    apply_rope(q2, k2, torch.tensor([99, 0]), cs)
    assert torch.equal(q, q2) and torch.equal(k, k2)


@pytest.mark.parametrize("config", CONFIGS + [INTERPRET_CONFIG], ids=config_id)
@pytest.mark.parametrize("norm", [False, True], ids=["rope", "norm_rope"])
def test_every_config(config, norm):
    g = _gen(1)
    q, k = _qk(5, 6, 2, 64, torch.float32, g, packed=True)  # 5 tokens: partial last tile; 6 heads: masked
    pos = _positions(5, g, large=True)
    cs = rope_cos_sin(64, MAX_POS, 1e6)
    qw, kw = randn(64, generator=g), randn(64, generator=g)
    if norm:
        q_ref, k_ref = qk_norm_rope_ref(q, k, qw, kw, 1e-6, pos, cs)
        qk_norm_rope(q, k, qw, kw, 1e-6, pos, cs, config=config)
    else:
        q_ref, k_ref = apply_rope_ref(q, k, pos, cs)
        apply_rope(q, k, pos, cs, config=config)
    assert_close(q, q_ref)
    assert_close(k, k_ref)


@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_interpreter_config_over_several_tiles(dtype):
    # The interpreter's widest tiles: 3 programs, the last one partial, packed (strided) q and k.
    g = _gen(2)
    t = 2 * INTERPRET_CONFIG.kwargs["BLOCK_T"] + 5
    q, k = _qk(t, 6, 2, 128, dtype, g, packed=True)
    qw, kw = randn(128, dtype=dtype, generator=g), randn(128, dtype=dtype, generator=g)
    pos = _positions(t, g, large=True)
    cs = rope_cos_sin(128, MAX_POS, 1e6)
    q_ref, k_ref = qk_norm_rope_ref(q, k, qw, kw, 1e-6, pos, cs)
    qk_norm_rope(q, k, qw, kw, 1e-6, pos, cs, config=INTERPRET_CONFIG)
    assert_close(q, q_ref.float(), dtype)
    assert_close(k, k_ref.float(), dtype)
    q_ref, k_ref = apply_rope_ref(q, k, pos, cs)
    apply_rope(q, k, pos, cs, config=INTERPRET_CONFIG)
    assert_close(q, q_ref.float(), dtype)
    assert_close(k, k_ref.float(), dtype)


def test_norm_then_rope_equals_composition():
    q, k = randn(3, 4, 128, dtype=torch.float16), randn(3, 2, 128, dtype=torch.float16)
    qw, kw = randn(128, dtype=torch.float16), randn(128, dtype=torch.float16)
    pos, cs = torch.tensor([1, 2, 30000]), rope_cos_sin(128, MAX_POS, 1e6)
    qn, kn = head_rms_norm_ref(q, qw, 1e-6), head_rms_norm_ref(k, kw, 1e-6)
    apply_rope(qn, kn, pos, cs)
    qk_norm_rope(q, k, qw, kw, 1e-6, pos, cs)
    assert_close(q, qn.float(), torch.float16)
    assert_close(k, kn.float(), torch.float16)


def test_empty_input():
    apply_rope(torch.empty(0, 2, 64), torch.empty(0, 1, 64), torch.empty(0, dtype=torch.long), rope_cos_sin(64, 8, 1e4))


def test_bad_inputs_raise():
    q, k, pos, cs = randn(3, 4, 64), randn(3, 2, 64), torch.arange(3), rope_cos_sin(64, 16, 1e4)
    with pytest.raises(ValueError, match="3-D"):
        apply_rope(q[0], k, pos, cs)
    with pytest.raises(ValueError, match="agree"):
        apply_rope(q, randn(2, 2, 64), pos, cs)
    with pytest.raises(ValueError, match="must match q"):
        apply_rope(q, k.half(), pos, cs)
    with pytest.raises(ValueError, match="dtype"):
        apply_rope(q.to(torch.int32), k.to(torch.int32), pos, cs)
    with pytest.raises(ValueError, match="even"):
        apply_rope(randn(3, 4, 63), randn(3, 2, 63), pos, rope_cos_sin(64, 16, 1e4)[:, :63])
    with pytest.raises(ValueError, match="positions"):
        apply_rope(q, k, pos.float(), cs)
    with pytest.raises(ValueError, match="positions"):
        apply_rope(q, k, torch.arange(4), cs)
    with pytest.raises(ValueError, match="cos_sin"):
        apply_rope(q, k, pos, cs.half())
    with pytest.raises(ValueError, match="cos_sin"):
        apply_rope(q, k, pos, rope_cos_sin(128, 16, 1e4))
    with pytest.raises(ValueError, match="contiguous last"):
        apply_rope(randn(3, 64, 4).transpose(1, 2), k, pos, cs)
    with pytest.raises(ValueError, match="q_weight"):
        qk_norm_rope(q, k, randn(32), randn(64), 1e-6, pos, cs)
    with pytest.raises(ValueError, match="k_weight"):
        qk_norm_rope(q, k, randn(64), torch.arange(64), 1e-6, pos, cs)
    with pytest.raises(ValueError, match="head_dim"):
        rope_cos_sin(63, 16, 1e4)


# ---- GPU: bf16 at Qwen3-0.6B / 8B shapes (16 / 32 q heads, 8 kv heads, head_dim 128, theta 1e6) ----

@pytest.mark.gpu
@pytest.mark.parametrize("heads,kv_heads", [(16, 8), (32, 8)])
@pytest.mark.parametrize("tokens", [1, 16, 256, 4096])
def test_gpu_bf16_rope_and_fused(heads, kv_heads, tokens):
    dt, d = torch.bfloat16, 128
    g = _gen(tokens)
    cs = rope_cos_sin(d, MAX_POS, 1e6, device="cuda")
    pos = _positions(tokens, g, large=True).cuda()
    q, k = _qk(tokens, heads, kv_heads, d, dt, g, packed=True, device="cuda")
    qw = randn(d, dtype=dt, device="cuda", scale=0.1) + 1
    kw = randn(d, dtype=dt, device="cuda", scale=0.1) + 1
    q_ref, k_ref = apply_rope_ref(q, k, pos, cs)
    q_hf, k_hf = _hf_apply(q, k, pos, d, 1e6)  # transformers in bf16 arithmetic
    for config in CONFIGS:
        q1, k1 = q.clone(), k.clone()
        apply_rope(q1, k1, pos, cs, config=config)
        assert_close(q1, q_ref.float(), dt)
        assert_close(k1, k_ref.float(), dt)
    apply_rope(q, k, pos, cs)  # tuned
    assert_close(q, q_hf.float(), dt)
    assert_close(k, k_hf.float(), dt)
    q2, k2 = _qk(tokens, heads, kv_heads, d, dt, g, packed=True, device="cuda")
    q_ref, k_ref = qk_norm_rope_ref(q2, k2, qw, kw, 1e-6, pos, cs)
    qk_norm_rope(q2, k2, qw, kw, 1e-6, pos, cs)
    assert_close(q2, q_ref.float(), dt)
    assert_close(k2, k_ref.float(), dt)


@pytest.mark.gpu
def test_gpu_qk_norm_rope_in_cuda_graph():
    dt, d = torch.bfloat16, 128
    qkv = randn(16, 48 * d, dtype=dt, device="cuda")
    q, k = qkv[:, : 32 * d].view(16, 32, d), qkv[:, 32 * d : 40 * d].view(16, 8, d)
    qw, kw = randn(d, dtype=dt, device="cuda"), randn(d, dtype=dt, device="cuda")
    pos = torch.randint(0, MAX_POS, (16,), device="cuda")
    cs = rope_cos_sin(d, MAX_POS, 1e6, device="cuda")
    saved = qkv.clone()
    qk_norm_rope(q, k, qw, kw, 1e-6, pos, cs)  # tune outside the graph
    qkv.copy_(saved)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        qk_norm_rope(q, k, qw, kw, 1e-6, pos, cs)
    qkv.copy_(saved)
    graph.replay()
    sq, sk = saved[:, : 32 * d].view(16, 32, d), saved[:, 32 * d : 40 * d].view(16, 8, d)
    q_ref, k_ref = qk_norm_rope_ref(sq, sk, qw, kw, 1e-6, pos, cs)
    assert_close(q, q_ref.float(), dt)
    assert_close(k, k_ref.float(), dt)
