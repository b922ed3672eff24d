"""Mixture-of-experts MLP (grouped GEMM over expert-sorted pairs) against the fp32 reference; routing and
alignment kernels against their torch twins, exactly."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tritium.autotune import config_id
from tritium.kernels.moe import CONFIGS, INTERPRET_CONFIG, fused_moe, fused_moe_ref, moe_block_m
from tritium.kernels.moe_routing import moe_align, moe_align_torch, moe_route, moe_route_ref
from sm90 import run_script
from tensor_checks import assert_close, randn

CPU_DTYPES = [torch.float32, torch.float16]


def _weights(e, h, i, dtype, device="cpu", generator=None):
    w13 = randn(e, 2 * i, h, scale=h**-0.5, generator=generator).to(dtype).to(device)
    w2 = randn(e, h, i, scale=i**-0.5, generator=generator).to(dtype).to(device)
    return w13, w2


@given(
    t=st.integers(1, 40),
    e=st.sampled_from([1, 4, 8, 16]),
    k=st.integers(1, 4),
    block_m=st.sampled_from([16, 32, 64]),
    skew=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_align_groups_every_pair_once_by_expert(t, e, k, block_m, skew, seed):
    k = min(k, e)
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(t, e, generator=g) + (torch.arange(e) * 4.0 if skew else 0.0)  # skew: a few experts win
    _, ids = moe_route(logits, k, False)
    pairs, block_expert = moe_align(ids, e, block_m)
    assert pairs.numel() == block_expert.numel() * block_m
    flat = ids.reshape(-1)
    real = pairs < t * k
    assert sorted(pairs[real].tolist()) == list(range(t * k)), "every pair exactly once"
    rows = pairs.view(-1, block_m)
    for m, expert in enumerate(block_expert.tolist()):
        ok = rows[m] < t * k
        if expert < 0:
            assert not ok.any(), "a block with no expert holds no pair"
        else:
            assert ok.any(), "a block with an expert holds a pair"
            assert (flat[rows[m][ok].long()] == expert).all(), "a block's pairs share its expert"
    used = block_expert[block_expert >= 0]
    assert (used[1:] >= used[:-1]).all() and (block_expert[len(used):] == -1).all(), "runs in expert order"
    want = moe_align_torch(ids, e, block_m)
    assert torch.equal(pairs, want[0]) and torch.equal(block_expert, want[1]), "the kernel is the torch layout"


@pytest.mark.parametrize("e,block_m", [(128, 16), (60, 64)])
def test_align_kernel_at_its_largest_step_is_the_torch_layout(e, block_m):
    from tritium.kernels.moe_routing import KERNEL_MAX_PAIRS

    ids = torch.randint(0, e, (KERNEL_MAX_PAIRS // 8, 8))
    ids[: len(ids) // 2, 0] = 3  # one expert far above the rest: runs of many blocks
    got = moe_align(ids, e, block_m)  # the kernel's path: its largest step
    want = moe_align_torch(ids, e, block_m)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@given(
    t=st.integers(1, 40),
    e=st.sampled_from([1, 6, 8, 64, 128]),
    k=st.integers(1, 8),
    renormalize=st.booleans(),
    dtype=st.sampled_from(CPU_DTYPES),
    seed=st.integers(0, 2**16),
)
def test_route_is_softmax_top_k(t, e, k, renormalize, dtype, seed):
    k = min(k, e)
    g = torch.Generator().manual_seed(seed)
    logits = randn(t, e + 3, dtype=dtype, scale=3.0, generator=g)[:, :e]  # strided rows
    weights, ids = moe_route(logits, k, renormalize)
    want_w, want_ids = moe_route_ref(logits, k, renormalize)
    assert ids.dtype == torch.int32 and weights.dtype == torch.float32
    assert torch.equal(ids, want_ids)  # fp32 softmax of distinct values: no ties
    assert_close(weights, want_w)


@given(
    t=st.integers(1, 24),
    e=st.sampled_from([4, 8, 16]),
    k=st.integers(1, 4),
    h=st.sampled_from([64, 96]),
    i=st.sampled_from([32, 80]),
    dtype=st.sampled_from(CPU_DTYPES),
    renormalize=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fused_moe_matches_reference(t, e, k, h, i, dtype, renormalize, seed):
    g = torch.Generator().manual_seed(seed)
    x = randn(t, h, dtype=dtype, generator=g)
    w13, w2 = _weights(e, h, i, dtype, generator=g)
    weights, ids = moe_route(torch.randn(t, e, generator=g), k, renormalize)
    out = fused_moe(x, w13, w2, weights, ids)
    assert out.shape == (t, h) and out.dtype == dtype
    assert_close(out, fused_moe_ref(x.float(), w13.float(), w2.float(), weights, ids).float(), dtype, scale=2.0)


@pytest.mark.parametrize("config", CONFIGS + [INTERPRET_CONFIG], ids=config_id)
def test_every_config(config):
    # strided rows of x; K and N not multiples of the blocks; a skewed routing (one expert takes most rows)
    t, e, k, h, i = 19, 8, 2, 96, 80
    x = randn(t, h + 8)[:, 4:4 + h]
    w13, w2 = _weights(e, h, i, torch.float32)
    weights, ids = moe_route(randn(t, e) + torch.arange(e) * 3.0, k, True)
    assert_close(fused_moe(x, w13, w2, weights, ids, config=config), fused_moe_ref(x, w13, w2, weights, ids))


@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_gated_down_is_silu_and_mul_then_the_plain_gemm_bit_for_bit(dtype):
    from tritium.kernels.activation import silu_and_mul
    from tritium.kernels.moe import _gemm

    t, e, k, h, i = 9, 8, 2, 64, 80
    gate_up = randn(t * k, 2 * i, dtype=dtype, scale=2.0)
    _, w2 = _weights(e, h, i, dtype)
    weights, ids = moe_route(randn(t, e), k, True)
    block_m = moe_block_m(t, k, e)
    pairs, block_expert = moe_align(ids, e, block_m)
    row_weight = weights.reshape(-1).contiguous()
    fused, plain = (torch.full((t * k, h), -7.0, dtype=dtype) for _ in range(2))
    _gemm(gate_up, w2, fused, pairs, block_expert, row_weight, t, k, False, block_m, gated=True)
    _gemm(silu_and_mul(gate_up), w2, plain, pairs, block_expert, row_weight, t, k, False, block_m)
    assert torch.equal(fused, plain) and not (fused == -7.0).any()


def test_out_is_written_and_returned():
    x = randn(5, 64)
    w13, w2 = _weights(4, 64, 32, torch.float32)
    weights, ids = moe_route(randn(5, 4), 2, True)
    out = torch.full((5, 64), -7.0)
    assert fused_moe(x, w13, w2, weights, ids, out=out) is out
    assert_close(out, fused_moe_ref(x, w13, w2, weights, ids))
    with pytest.raises(ValueError, match="out must be"):
        fused_moe(x, w13, w2, weights, ids, out=torch.empty(5, 63))


def test_matches_transformers_sparse_block():
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    cfg = Qwen3MoeConfig(hidden_size=64, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2,
                         norm_topk_prob=True)
    block = Qwen3MoeSparseMoeBlock(cfg).float()
    torch.nn.init.normal_(block.experts.gate_up_proj, std=64**-0.5)
    torch.nn.init.normal_(block.experts.down_proj, std=32**-0.5)
    torch.nn.init.normal_(block.gate.weight, std=64**-0.5)  # the router starts at zeros: all experts tie
    x = randn(7, 64)
    with torch.no_grad():
        want = block(x.unsqueeze(0))
        want = (want[0] if isinstance(want, tuple) else want).squeeze(0)
        weights, ids = moe_route(x @ block.gate.weight.t(), 2, True)
        got = fused_moe(x, block.experts.gate_up_proj.contiguous(), block.experts.down_proj.contiguous(), weights, ids)
    assert_close(got, want)


def test_block_m_follows_the_token_bucket():
    assert moe_block_m(1, 8, 128) == 16 and moe_block_m(4096, 8, 128) == 64
    assert moe_block_m(200, 2, 8) == moe_block_m(256, 2, 8)  # same bucket, same layout


def test_empty_input():
    w13, w2 = _weights(4, 64, 32, torch.float32)
    out = fused_moe(torch.empty(0, 64), w13, w2, torch.empty(0, 2), torch.empty(0, 2, dtype=torch.long))
    assert out.shape == (0, 64)


def test_bad_inputs_raise():
    x = randn(3, 64)
    w13, w2 = _weights(4, 64, 32, torch.float32)
    weights, ids = moe_route(randn(3, 4), 2, False)
    with pytest.raises(ValueError, match="shapes do not agree"):
        fused_moe(randn(3, 48), w13, w2, weights, ids)
    with pytest.raises(ValueError, match="shapes do not agree"):
        fused_moe(x, w13, w2[:, :, :16].contiguous(), weights, ids)
    with pytest.raises(ValueError, match="dtype"):
        fused_moe(x.half(), w13, w2, weights, ids)
    with pytest.raises(ValueError, match="topk_ids"):
        fused_moe(x, w13, w2, weights[:2], ids[:2])
    with pytest.raises(ValueError, match="contiguous"):
        fused_moe(randn(64, 3).t(), w13, w2, weights, ids)


def test_kernels_compile_for_sm90_without_spills():
    """Every config of the grouped GEMM, and the routing kernels, at Qwen3-30B-A3B's shapes (moe_sm90.py)."""
    stats = run_script("moe_sm90.py")
    assert len(stats) == 4 * len(CONFIGS) + 2
    for name, got in stats.items():
        assert got["spills"] == 0 and got["shared"] <= 227 * 1024, (name, got)  # H100: 227 KB a block


# ---- GPU: bf16 at Qwen3-30B-A3B's expert shapes (128 experts, top 8, hidden 2048, expert width 768) ----

@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [1, 2, 16, 256, 2048])
def test_gpu_bf16(tokens):
    dt, e, k, h, i = torch.bfloat16, 128, 8, 2048, 768
    g = torch.Generator(device="cuda").manual_seed(tokens)
    x = torch.randn(tokens, h, device="cuda", generator=g).to(dt)
    w13 = (torch.randn(e, 2 * i, h, device="cuda", generator=g) * h**-0.5).to(dt)
    w2 = (torch.randn(e, h, i, device="cuda", generator=g) * i**-0.5).to(dt)
    weights, ids = moe_route(torch.randn(tokens, e, device="cuda", generator=g), k, True)
    ref = fused_moe_ref(x, w13, w2, weights, ids).float()
    assert_close(fused_moe(x, w13, w2, weights, ids), ref, dt)
    for config in CONFIGS:
        assert_close(fused_moe(x, w13, w2, weights, ids, config=config), ref, dt)


@pytest.mark.gpu
def test_gpu_in_cuda_graph():
    dt, t, e, k, h, i = torch.bfloat16, 4, 64, 4, 512, 256
    x = randn(t, h, dtype=dt, device="cuda")
    w13, w2 = _weights(e, h, i, dt, device="cuda")
    weights, ids = moe_route(randn(t, e, device="cuda"), k, True)
    fused_moe(x, w13, w2, weights, ids)  # tune outside the graph
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fused_moe(x, w13, w2, weights, ids)
    for _ in range(3):  # new inputs and a new routing each replay
        x.copy_(randn(t, h, dtype=dt, device="cuda"))
        new_w, new_ids = moe_route(randn(t, e, device="cuda"), k, True)
        weights.copy_(new_w)
        ids.copy_(new_ids)
        graph.replay()
        assert_close(out, fused_moe_ref(x, w13, w2, weights, ids).float(), dt)
