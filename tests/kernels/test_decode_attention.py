"""Paged split-KV decode attention against the fp32 reference: shuffled block tables (unowned slots hold
NaN), padded rows (seq_len 0), GQA, head dims, split counts; invariances; CUDA-graph replay on the GPU."""
import math
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tritium.autotune import config_id
from tritium.kernels.attention_ref import random_paged_kv
from tritium.kernels.decode_attention import CONFIGS, decode_attention, decode_attention_ref, decode_num_splits
from tritium.kernels.prefill_attention import prefill_attention
from tensor_checks import assert_close, randn

CPU_DTYPES = [torch.float32, torch.float16]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _case(seq_lens, hq, hkv, d, bs, dtype, g, device="cpu", **kw):
    kc, vc, bt = random_paged_kv(seq_lens, hkv, d, bs, dtype=dtype, device=device, generator=g, **kw)
    q = randn(len(seq_lens), hq, d, dtype=dtype, generator=g).to(device)
    return q, kc, vc, torch.tensor(seq_lens, dtype=torch.int32, device=device), bt


@given(
    seq_lens=st.lists(st.integers(0, 300), min_size=1, max_size=4).filter(any),
    group=st.sampled_from([1, 2, 4, 8]),
    d=st.sampled_from([64, 128]),
    bs=st.sampled_from([16, 32, 64, 256]),
    splits=st.sampled_from([None, 1, 2, 3, 5]),
    dtype=st.sampled_from(CPU_DTYPES),
    seed=st.integers(0, 2**16),
)
def test_decode_matches_reference(seq_lens, group, d, bs, splits, dtype, seed):
    hkv = 1 if group == 8 else 2
    q, kc, vc, sl, bt = _case(seq_lens, group * hkv, hkv, d, bs, dtype, _gen(seed), extra_blocks=2)
    out = decode_attention(q, kc, vc, sl, bt, d**-0.5, num_splits=splits)
    assert out.dtype == dtype
    assert_close(out, decode_attention_ref(q, kc, vc, sl, bt, d**-0.5), dtype)
    assert (out[sl == 0] == 0).all()


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_every_config(config, splits, dtype):
    q, kc, vc, sl, bt = _case([150, 0, 33, 1], 8, 2, 64, 16, dtype, _gen(1))
    out = decode_attention(q, kc, vc, sl, bt, 0.125, num_splits=splits, config=config)
    assert_close(out, decode_attention_ref(q, kc, vc, sl, bt, 0.125), dtype)


def test_padded_rows_write_zeros_and_read_nothing():
    # rows with seq_len 0 point at a block table of -1 entries and must overwrite NaN in out with zeros
    q, kc, vc, sl, bt = _case([40, 0, 0, 17], 4, 2, 64, 16, torch.float32, _gen(2))
    bt[1:3] = -1
    out = torch.full_like(q, float("nan"))
    for splits in (1, 4):
        decode_attention(q, kc, vc, sl, bt, 0.125, out=out, num_splits=splits)
        assert torch.isfinite(out).all()
        assert (out[1:3] == 0).all()
        assert_close(out, decode_attention_ref(q, kc, vc, sl, bt, 0.125), torch.float32)


def test_moving_blocks_leaves_output_unchanged():
    q, kc, vc, sl, bt = _case([77, 130, 5], 4, 2, 64, 16, torch.float32, _gen(3), extra_blocks=5)
    before = decode_attention(q, kc, vc, sl, bt, 0.125, num_splits=2)
    perm = torch.randperm(kc.shape[0], generator=_gen(4))  # physical block i moves to slot perm[i]
    kc2, vc2 = torch.empty_like(kc), torch.empty_like(vc)
    kc2[perm], vc2[perm] = kc, vc
    bt2 = torch.where(bt >= 0, perm.int()[bt.clamp_min(0).long()], bt)
    after = decode_attention(q, kc2, vc2, sl, bt2, 0.125, num_splits=2)
    assert torch.equal(before, after)


@pytest.mark.parametrize("splits", [1, 2])
@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_one_token_context_returns_its_value(dtype, splits):
    q, kc, vc, sl, bt = _case([1, 1, 1], 8, 1, 128, 32, dtype, _gen(5))
    out = decode_attention(q, kc, vc, sl, bt, 0.7, num_splits=splits)
    for b in range(3):
        v = vc[bt[b, 0].long(), 0]  # [1, D]
        torch.testing.assert_close(out[b], v.expand(8, -1), rtol=0, atol=0)


def test_decode_equals_last_prefill_row():
    # the engine runs a prompt's last token through either kernel: they must agree
    seq_lens = [90, 33]
    q, kc, vc, sl, bt = _case(seq_lens, 4, 2, 64, 16, torch.float32, _gen(6))
    cu = torch.tensor([0, 1, 2], dtype=torch.int32)
    pre = prefill_attention(q, kc, vc, cu, sl, bt, 1, 0.125)
    assert_close(decode_attention(q, kc, vc, sl, bt, 0.125, num_splits=3), pre.float(), torch.float32)


def test_strided_q_and_out():
    g = _gen(7)
    seq_lens = [60, 21]
    kc, vc, bt = random_paged_kv(seq_lens, 2, 64, 16, generator=g)
    qkv = randn(2, 4 * 64 + 2 * 2 * 64, generator=g)
    q = qkv[:, : 4 * 64].view(2, 4, 64)
    out_buf = torch.full((2, 6, 64), float("nan"))
    out = out_buf[:, 2:]
    sl = torch.tensor(seq_lens, dtype=torch.int32)
    res = decode_attention(q, kc, vc, sl, bt, 0.2, out=out, num_splits=2)
    assert res.data_ptr() == out.data_ptr() and torch.isnan(out_buf[:, :2]).all()
    assert_close(out, decode_attention_ref(q, kc, vc, sl, bt, 0.2), torch.float32)


def test_num_splits_from_static_sizes():
    for b, hkv, ctx in [(1, 8, 32768), (256, 8, 1024), (3, 2, 100), (64, 8, 8192)]:
        s = decode_num_splits(b, hkv, ctx, "cpu")
        assert s >= 1 and s & (s - 1) == 0 and s <= max(1, ctx // 256)
    assert decode_num_splits(256, 8, 32768, "cpu") == 1


def test_num_splits_are_one_per_batch_bucket(monkeypatch):
    """The split count is a constexpr: the bucket warmed up at start-up must hold it for its every batch."""
    monkeypatch.setattr(sys.modules[decode_num_splits.__module__], "_num_sms", lambda device: 132)  # an H100's SMs: splits vary inside a bucket
    for bucket in (2, 4, 16, 128):
        splits = {decode_num_splits(b, 8, 4096, "cpu") for b in range(bucket // 2 + 1, bucket + 1)}
        assert splits == {decode_num_splits(bucket, 8, 4096, "cpu")}


def test_bad_inputs_raise():
    q, kc, vc, sl, bt = _case([20, 10], 4, 2, 64, 16, torch.float32, _gen(8))
    ok = dict(q=q, k_cache=kc, v_cache=vc, seq_lens=sl, block_tables=bt, scale=0.1)
    bad = [
        dict(q=q.half()),
        dict(q=q[:, :3]),
        dict(q=q[None]),
        dict(q=q.transpose(1, 2).contiguous().transpose(1, 2)),
        dict(k_cache=kc[:, :, :, :48].contiguous(), v_cache=vc[:, :, :, :48].contiguous(), q=q[..., :48]),
        dict(k_cache=kc[:, :8].contiguous(), v_cache=vc[:, :8].contiguous(), q=q),  # fine shape, see below
        dict(v_cache=vc[:, :8].contiguous()),
        dict(seq_lens=sl.long()),
        dict(seq_lens=sl[:1]),
        dict(block_tables=bt[:1]),
        dict(block_tables=bt.float()),
        dict(scale=math.nan),
        dict(out=torch.empty(2, 4, 32)),
        dict(out=torch.empty(2, 4, 64, dtype=torch.float16)),
        dict(num_splits=0),
    ]
    decode_attention(**ok)
    for i, change in enumerate(bad):
        if i == 5:  # block_size 8 (a power of two) is accepted
            decode_attention(**{**ok, **change, "seq_lens": torch.tensor([8, 8], dtype=torch.int32)})
            continue
        with pytest.raises(ValueError):
            decode_attention(**{**ok, **change})


# ---------------------------------------------------------------------------------------------- GPU


def _sdpa_decode(q, kc, vc, sl, bt, scale):
    """torch SDPA (bf16) per sequence over its gathered K/V."""
    from tritium.kernels.attention_ref import gather_kv

    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    for b, n in enumerate(sl.tolist()):
        if n:
            k = gather_kv(kc, bt[b], n).to(q.dtype).transpose(0, 1)[None]
            v = gather_kv(vc, bt[b], n).to(q.dtype).transpose(0, 1)[None]
            o = torch.nn.functional.scaled_dot_product_attention(q[b, :, None][None], k, v, scale=scale,
                                                                 enable_gqa=True)
            out[b] = o[0, :, 0].float()
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("hq,hkv", [(16, 8), (32, 8)], ids=["qwen3-0.6b", "qwen3-8b"])
@pytest.mark.parametrize(
    "seq_lens,bs",
    [([32768], 16), ([1, 700, 4096, 0, 32768, 129], 256), ([1024] * 64, 16), ([3000, 5, 0, 12000], 128)],
    ids=["1x32k", "mixed", "64x1k", "mixed2"],
)
def test_gpu_bf16_qwen3_shapes(hq, hkv, seq_lens, bs):
    dt = torch.bfloat16
    q, kc, vc, sl, bt = _case(seq_lens, hq, hkv, 128, bs, dt, None, device="cuda", extra_blocks=9)
    out = decode_attention(q, kc, vc, sl, bt, 128**-0.5)
    ref = decode_attention_ref(q, kc, vc, sl, bt, 128**-0.5)
    assert_close(out, ref, dt)
    err = ((out.float() - ref).norm() / ref.norm()).item()
    sdpa = _sdpa_decode(q, kc, vc, sl, bt, 128**-0.5)
    err_sdpa = ((sdpa - ref).norm() / ref.norm()).item()
    assert err <= 2 * err_sdpa + 1e-3, (err, err_sdpa)


@pytest.mark.gpu
@pytest.mark.parametrize("splits", [1, 7, 32])
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_gpu_every_config_bf16(config, splits):
    q, kc, vc, sl, bt = _case([5000, 0, 1, 300, 2048], 32, 8, 128, 16, torch.bfloat16, None, device="cuda")
    out = decode_attention(q, kc, vc, sl, bt, 0.09, num_splits=splits, config=config)
    assert_close(out, decode_attention_ref(q, kc, vc, sl, bt, 0.09), torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 256])
def test_gpu_other_head_dims(d):
    q, kc, vc, sl, bt = _case([3000, 17, 0], 8, 2, d, 32, torch.float16, None, device="cuda")
    out = decode_attention(q, kc, vc, sl, bt, d**-0.5)
    assert_close(out, decode_attention_ref(q, kc, vc, sl, bt, d**-0.5), torch.float16)


@pytest.mark.gpu
@pytest.mark.parametrize("hq,hkv", [(16, 8), (32, 8)], ids=["qwen3-0.6b", "qwen3-8b"])
def test_gpu_cuda_graph_replay(hq, hkv):
    """Capture one decode step at a static batch/max_blocks, replay it with new block tables, lengths and
    queries (some rows padded with seq_len 0), and compare every replay with the reference."""
    dt, bs, batch, max_blocks = torch.bfloat16, 16, 8, 256  # contexts up to 4096
    kc, vc, _ = random_paged_kv([max_blocks * bs] * batch, hkv, 128, bs, dtype=dt, device="cuda", poison=False)
    num_blocks = kc.shape[0]
    q_buf = torch.empty(batch, hq, 128, dtype=dt, device="cuda")
    sl_buf = torch.zeros(batch, dtype=torch.int32, device="cuda")
    bt_buf = torch.full((batch, max_blocks), -1, dtype=torch.int32, device="cuda")
    out_buf = torch.empty_like(q_buf)

    def fill(seed, lens):
        g = torch.Generator(device="cuda").manual_seed(seed)
        q_buf.copy_(torch.randn(q_buf.shape, generator=g, device="cuda").to(dt))
        sl_buf.copy_(torch.tensor(lens, dtype=torch.int32))
        perm = torch.randperm(num_blocks, generator=g, device="cuda").int()
        bt_buf.fill_(-1)
        i = 0
        for b, n in enumerate(lens):
            nb = -(-n // bs)
            bt_buf[b, :nb] = perm[i : i + nb]
            i += nb

    fill(0, [4096, 1, 100, 2000, 0, 0, 17, 3333])
    decode_attention(q_buf, kc, vc, sl_buf, bt_buf, 0.088, out=out_buf)  # tune + compile before capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        decode_attention(q_buf, kc, vc, sl_buf, bt_buf, 0.088, out=out_buf)
    for seed, lens in enumerate(
        [[4096, 1, 100, 2000, 0, 0, 17, 3333], [5, 4000, 0, 0, 0, 0, 0, 0], [1] * 8, [0] * 8, [2500] * 8], 1
    ):
        fill(seed, lens)
        out_buf.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        ref = decode_attention_ref(q_buf, kc, vc, sl_buf, bt_buf, 0.088)
        assert torch.isfinite(out_buf).all()
        assert (out_buf[sl_buf == 0] == 0).all()
        if any(lens):
            assert_close(out_buf, ref, dt)
