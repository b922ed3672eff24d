"""Paged prefill attention against the fp32 reference: varlen batches over cached prefixes and chunks,
shuffled block tables (unowned slots hold NaN), GQA, head dims; plus invariance properties."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tritium.autotune import config_id
from tritium.kernels.attention_ref import random_paged_kv
from tritium.kernels.prefill_attention import CONFIGS, prefill_attention, prefill_attention_ref
from tensor_checks import assert_close, randn

CPU_DTYPES = [torch.float32, torch.float16]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _cu(q_lens, device="cpu"):
    return torch.tensor([0] + list(torch.tensor(q_lens).cumsum(0).tolist()), dtype=torch.int32, device=device)


def _case(seq_lens, q_lens, hq, hkv, d, bs, dtype, g, device="cpu", **kw):
    """Paged cache + packed queries + metadata for sequences of full lengths seq_lens, last q_lens new."""
    kc, vc, bt = random_paged_kv(seq_lens, hkv, d, bs, dtype=dtype, device=device, generator=g, **kw)
    q = randn(sum(q_lens), hq, d, dtype=dtype, generator=g).to(device)
    sl = torch.tensor(seq_lens, dtype=torch.int32, device=device)
    return q, kc, vc, _cu(q_lens, device), sl, bt


def _run(q, kc, vc, cu, sl, bt, q_lens, **kw):
    scale = q.shape[-1] ** -0.5
    out = prefill_attention(q, kc, vc, cu, sl, bt, max(q_lens), scale, **kw)
    return out, prefill_attention_ref(q, kc, vc, cu, sl, bt, max(q_lens), scale)


@st.composite
def _batches(draw):
    n = draw(st.integers(1, 3))
    seq_lens = [draw(st.integers(1, 300 // n)) for _ in range(n)]
    q_lens = [draw(st.integers(1, s)) for s in seq_lens]  # the rest is a cached prefix / earlier chunks
    return seq_lens, q_lens


@given(
    batch=_batches(),
    group=st.sampled_from([1, 2, 4, 8]),
    d=st.sampled_from([64, 128]),
    bs=st.sampled_from([16, 32, 64, 256]),
    dtype=st.sampled_from(CPU_DTYPES),
    seed=st.integers(0, 2**16),
)
def test_prefill_matches_reference(batch, group, d, bs, dtype, seed):
    seq_lens, q_lens = batch
    hkv = 1 if group == 8 else 2
    args = _case(seq_lens, q_lens, group * hkv, hkv, d, bs, dtype, _gen(seed), extra_blocks=2)
    out, ref = _run(*args, q_lens)
    assert out.dtype == dtype
    assert_close(out, ref, dtype)


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_every_config(config, dtype):
    # several query tiles, a long cached prefix, a sequence shorter than a tile, GQA 2
    seq_lens, q_lens = [200, 150, 9], [140, 30, 9]
    args = _case(seq_lens, q_lens, 4, 2, 64, 16, dtype, _gen(1))
    out, ref = _run(*args, q_lens, config=config)
    assert_close(out, ref, dtype)


def test_moving_blocks_leaves_output_unchanged():
    seq_lens, q_lens = [77, 130], [40, 130]
    q, kc, vc, cu, sl, bt = _case(seq_lens, q_lens, 4, 2, 64, 16, torch.float32, _gen(2), extra_blocks=5)
    before = prefill_attention(q, kc, vc, cu, sl, bt, 130, 0.125)
    perm = torch.randperm(kc.shape[0], generator=_gen(3))  # physical block i moves to slot perm[i]
    kc2, vc2 = torch.empty_like(kc), torch.empty_like(vc)
    kc2[perm], vc2[perm] = kc, vc
    bt2 = torch.where(bt >= 0, perm.int()[bt.clamp_min(0).long()], bt)
    after = prefill_attention(q, kc2, vc2, cu, sl, bt2, 130, 0.125)
    assert torch.equal(before, after)


@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_one_token_context_returns_its_value(dtype):
    q, kc, vc, cu, sl, bt = _case([1, 1], [1, 1], 8, 2, 128, 32, dtype, _gen(4))
    out = prefill_attention(q, kc, vc, cu, sl, bt, 1, 0.3)
    for b in range(2):
        v = vc[bt[b, 0].long(), 0]  # [Hkv, D]
        torch.testing.assert_close(out[b], v.repeat_interleave(4, dim=0), rtol=0, atol=0)


@given(
    total=st.integers(2, 200),
    cuts=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=3),
    bs=st.sampled_from([16, 64]),
    dtype=st.sampled_from(CPU_DTYPES),
    seed=st.integers(0, 2**16),
)
def test_chunked_prefill_equals_one_shot(total, cuts, bs, dtype, seed):
    bounds = sorted({0, total, *(min(total - 1, max(1, int(c * total))) for c in cuts)})
    q, kc, vc, cu, sl, bt = _case([total], [total], 4, 1, 64, bs, dtype, _gen(seed))
    one_shot = prefill_attention(q, kc, vc, cu, sl, bt, total, 0.125)
    parts = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):  # chunk [lo, hi): its K/V and everything before are cached
        sl_c = torch.tensor([hi], dtype=torch.int32)
        parts.append(prefill_attention(q[lo:hi], kc, vc, _cu([hi - lo]), sl_c, bt, hi - lo, 0.125))
    assert_close(torch.cat(parts), one_shot.float(), dtype)


def test_strided_q_out_and_empty_sequence():
    # q as the query slice of a packed qkv row, out a slice of a wider buffer; sequence 1 has no new tokens
    g = _gen(5)
    seq_lens, q_lens = [50, 20, 33], [50, 0, 3]
    kc, vc, bt = random_paged_kv(seq_lens, 2, 64, 16, generator=g)
    qkv = randn(53, 4 * 64 + 2 * 2 * 64, generator=g)
    q = qkv[:, : 4 * 64].view(53, 4, 64)
    out_buf = torch.full((53, 5, 64), float("nan"))
    out = out_buf[:, 1:]
    sl = torch.tensor(seq_lens, dtype=torch.int32)
    res = prefill_attention(q, kc, vc, _cu(q_lens), sl, bt, 50, 0.2, out=out)
    assert res.data_ptr() == out.data_ptr()
    assert torch.isnan(out_buf[:, 0]).all()
    assert_close(out, prefill_attention_ref(q, kc, vc, _cu(q_lens), sl, bt, 50, 0.2), torch.float32)


def test_bad_inputs_raise():
    q, kc, vc, cu, sl, bt = _case([20, 10], [5, 10], 4, 2, 64, 16, torch.float32, _gen(6))
    ok = dict(q=q, k_cache=kc, v_cache=vc, cu_seqlens_q=cu, seq_lens=sl, block_tables=bt, max_seqlen_q=10,
              scale=0.1)
    bad = [
        dict(q=q.half()),
        dict(q=q[:, :3]),  # 3 q heads over 2 kv heads
        dict(q=q.transpose(1, 2).contiguous().transpose(1, 2)),  # head dim not contiguous
        dict(k_cache=kc[:, :, :, :48].contiguous(), v_cache=vc[:, :, :, :48].contiguous(), q=q[..., :48]),
        dict(v_cache=vc[:, :8].contiguous()),  # shape differs from k_cache
        dict(cu_seqlens_q=cu.long()),
        dict(seq_lens=sl[:1]),
        dict(block_tables=bt[:1]),
        dict(block_tables=bt.long()),
        dict(max_seqlen_q=-1),
        dict(scale=math.inf),
        dict(out=torch.empty(15, 4, 32)),
    ]
    prefill_attention(**ok)
    # strided caches (last dim contiguous) are accepted: head_dim 32 sliced out of 64
    prefill_attention(**{**ok, "k_cache": kc[..., :32], "v_cache": vc[..., :32], "q": q[..., :32]})
    for change in bad:
        with pytest.raises(ValueError):
            prefill_attention(**{**ok, **change})


# ---------------------------------------------------------------------------------------------- GPU


def _sdpa_paged(q, kc, vc, cu, sl, bt, scale, dtype):
    """Torch SDPA (in `dtype`) over each sequence's gathered K/V, bottom-right causal, queries in chunks."""
    from tritium.kernels.attention_ref import gather_kv

    F = torch.nn.functional
    res = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    cu_l, sl_l = cu.tolist(), sl.tolist()
    for b, n in enumerate(sl_l):
        lo, hi = cu_l[b], cu_l[b + 1]
        k = gather_kv(kc, bt[b], n).to(dtype).transpose(0, 1)[None]
        v = gather_kv(vc, bt[b], n).to(dtype).transpose(0, 1)[None]
        for c in range(lo, hi, 1024):
            e = min(hi, c + 1024)
            pos = torch.arange(n - (hi - lo) + (c - lo), n - (hi - lo) + (e - lo), device=q.device)
            mask = torch.arange(n, device=q.device)[None, :] <= pos[:, None]
            qq = q[c:e].to(dtype).transpose(0, 1)[None]
            o = F.scaled_dot_product_attention(qq, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
            res[c:e] = o[0].transpose(0, 1).float()
    return res


@pytest.mark.gpu
@pytest.mark.parametrize("hq,hkv", [(16, 8), (32, 8)], ids=["qwen3-0.6b", "qwen3-8b"])
@pytest.mark.parametrize(
    "seq_lens,q_lens,bs",
    [
        ([4096], [4096], 16),
        ([1000, 37, 513, 2048], [1000, 37, 100, 1024], 256),  # mixed: fresh, prefix-cached, chunked
        ([32768], [32768], 64),
        ([32768, 20000], [4096, 1], 16),  # a late chunk of a 32k context
    ],
    ids=["4k", "mixed", "32k", "32k-chunk"],
)
def test_gpu_bf16_qwen3_shapes(hq, hkv, seq_lens, q_lens, bs):
    dt = torch.bfloat16
    q, kc, vc, cu, sl, bt = _case(seq_lens, q_lens, hq, hkv, 128, bs, dt, None, device="cuda", extra_blocks=7)
    scale = 128**-0.5
    out = prefill_attention(q, kc, vc, cu, sl, bt, max(q_lens), scale)
    ref = _sdpa_paged(q, kc, vc, cu, sl, bt, scale, torch.float32)
    assert_close(out, ref, dt)
    sdpa_bf16 = _sdpa_paged(q, kc, vc, cu, sl, bt, scale, dt)  # torch's own bf16 error as a yardstick
    err = ((out.float() - ref).norm() / ref.norm()).item()
    err_sdpa = ((sdpa_bf16 - ref).norm() / ref.norm()).item()
    assert err <= 2 * err_sdpa + 1e-3, (err, err_sdpa)


@pytest.mark.gpu
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_gpu_every_config_bf16(config):
    seq_lens, q_lens = [3000, 700, 129, 64], [1000, 700, 1, 17]
    q, kc, vc, cu, sl, bt = _case(seq_lens, q_lens, 16, 8, 128, 32, torch.bfloat16, None, device="cuda")
    out = prefill_attention(q, kc, vc, cu, sl, bt, max(q_lens), 0.09, config=config)
    assert_close(out, prefill_attention_ref(q, kc, vc, cu, sl, bt, max(q_lens), 0.09), torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 256])
def test_gpu_other_head_dims(d):
    seq_lens, q_lens = [1500, 300], [700, 300]
    q, kc, vc, cu, sl, bt = _case(seq_lens, q_lens, 8, 2, d, 16, torch.float16, None, device="cuda")
    out = prefill_attention(q, kc, vc, cu, sl, bt, 700, d**-0.5)
    assert_close(out, prefill_attention_ref(q, kc, vc, cu, sl, bt, 700, d**-0.5), torch.float16)
