"""Tests of tritium.kernels.sampling, the plain path (sampling/plain.py: temperature, greedy, seeds, logprobs);
the filters are tested in test_sampling_filter.py.

Draws are tested exactly (greedy rows against argmax), for invariance (configs, chunkings, batch layouts, CUDA
graphs) and statistically (many offsets of one row in one launch against the reference distribution, with a
chi-square bound that the wrong distribution fails).
"""
import pytest
import torch

import tritium
from tritium.kernels.sampling import CONFIGS, keep_mask_ref, plain, sample, sample_probs_ref, sample_ref
from sampling_cases import (CHI2_CRIT, DEV, GPU, GPU_DTYPE, N_DRAWS, VOCAB, chi_square, filters, params,
                            peaked_bf16, scaled)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_greedy_is_argmax_lowest_id_across_chunks(dtype):
    B, V = 6, 9000  # three plain chunks of 4096; five filter blocks per lane
    x = torch.randn(B, V).to(dtype)
    x[0, [5, 8500]] = 9.0
    x[1, [4095, 4096]] = 9.0  # tie across a chunk boundary
    x[2, [100, 8999]] = 9.0
    t, seeds, offs = params(B, temp=[0.0, 0.0, 0.0, 0.0, 0.9, 1.3])
    x, t = x.to(DEV), t.to(DEV)
    want = x.float().argmax(-1)
    assert want[:3].tolist() == [5, 4095, 100]
    tok = sample(x, t, seeds, offs)
    assert torch.equal(tok[:4], want[:4])
    kw = filters(B, k=[3, 0, 0, 5, 5, 0], p=[1.0, 0.5, 1.0, 0.9, 1.0, 0.9], mp=[0.0, 0.0, 0.3, 0.1, 0.0, 0.0])
    tok_f = sample(x, t, seeds, offs, **kw)
    assert torch.equal(tok_f[:4], want[:4])
    keep = keep_mask_ref(scaled(x, t), **kw)
    assert keep.gather(1, tok_f[:, None]).all()


def test_logprobs_match_reference():
    B, V = 6, 50
    x = (torch.randn(B, V) * 2).to(DEV)
    t, seeds, offs = params(B, temp=[1.0, 0.0, 0.7, 1.3, 0.0, 2.0])
    filt = filters(B, k=[3, 0, 5, 1, 2, 0], p=[1.0, 0.9, 0.5, 1.0, 1.0, 0.3], mp=[0, 0, 0, 0, 0.1, 0.2])
    for kw in (filters(B), filt):
        kw = {k: v for k, v in kw.items() if v is not None}
        lp = torch.empty(B, device=DEV)
        tok = sample(x, t, seeds, offs, logprobs_out=lp, **kw)
        probs, logp = sample_probs_ref(x, t, **kw)
        assert (probs.gather(1, tok[:, None]) > 0).all()
        torch.testing.assert_close(lp, logp.gather(1, tok[:, None])[:, 0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cfg", CONFIGS, ids=tritium.autotune.config_id)
def test_every_config_draws_the_same(cfg):
    B, V = 5, 3000  # one chunk: full blocks and a ragged tail for every BLOCK
    x = (torch.randn(B, V) * 3).to(DEV)
    t, seeds, offs = params(B, temp=[0.8, 0.0, 1.0, 0.5, 2.0], seed=[1, 2, 3, 4, 2**40 + 5])
    lp = torch.empty(B, device=DEV)
    tok = sample(x, t, seeds, offs, logprobs_out=lp, config=cfg)
    assert torch.equal(tok, sample(x, t, seeds, offs, config=CONFIGS[0]))
    _, logp = sample_probs_ref(x, t)
    torch.testing.assert_close(lp, logp.gather(1, tok[:, None])[:, 0], atol=1e-5, rtol=1e-5)


def test_draws_independent_of_batch_layout_and_chunking(monkeypatch):
    V = 9000
    rows = (torch.randn(3, V) * 3).to(DEV)
    t = torch.tensor([0.7, 1.0, 0.0], device=DEV)
    seeds = torch.tensor([11, 2**35 + 7, 5], device=DEV)
    offs = torch.tensor([3, 0, 9], device=DEV)
    kw = filters(3, k=[0, 8, 0], p=[0.7, 1.0, 0.9])
    order = torch.tensor([4, 0, 3, 1, 2], device=DEV)  # rows 0..2 at 1, 3, 4 beside two others
    big = torch.cat([rows, (torch.randn(2, V) * 3).to(DEV)])[order]
    bt, bs, bo = (torch.cat([v, v[:2] + 1])[order] for v in (t, seeds, offs))
    bkw = {k: torch.cat([v, v[:2]])[order] for k, v in kw.items() if v is not None}
    for filt, fkw in ((False, {}), (True, {k: v for k, v in kw.items() if v is not None})):
        alone = sample(rows, t, seeds, offs, **fkw)
        assert torch.equal(alone, sample(rows, t, seeds, offs, **fkw)), "not reproducible across calls"
        mixed = sample(big, bt, bs, bo, **(bkw if filt else {}))
        assert torch.equal(mixed[[1, 3, 4]], alone)
    three_chunks = sample(rows, t, seeds, offs)
    assert plain.plan_chunks(3, V)[0] == 3
    monkeypatch.setattr(plain, "TARGET_PROGRAMS", 1)  # one chunk per row instead of three
    assert plain.plan_chunks(3, V)[0] == 1
    assert torch.equal(sample(rows, t, seeds, offs), three_chunks)


def test_plain_distribution_matches_softmax():
    N, V = 600, 10
    x = (torch.randn(1, V, generator=torch.Generator().manual_seed(7)) * 1.5).to(DEV)
    t, seeds, offs = params(N, temp=0.7)
    tok = sample(x.expand(N, V), t, seeds, offs)  # one row, 600 steps, one launch
    counts = torch.bincount(tok.cpu(), minlength=V)
    probs, _ = sample_probs_ref(x, t[:1])
    chi2, df = chi_square(counts, probs[0].cpu())
    assert chi2 < CHI2_CRIT[df - 1], f"chi2 {chi2:.1f} (df {df})"
    wrong = torch.softmax(x[0].float().cpu(), -1)  # temperature ignored: must be rejected
    assert chi_square(counts, wrong)[0] > CHI2_CRIT[df - 1]


def test_fp16_draws_match_fp32_of_the_same_values():
    B, V = 4, 300
    x = (torch.randn(B, V) * 3).half().to(DEV)
    t, seeds, offs = params(B, temp=[1.0, 0.5, 0.0, 1.5])
    kw = {k: v for k, v in filters(B, k=[0, 5, 3, 0], p=[0.9, 1.0, 1.0, 0.8]).items() if v is not None}
    assert torch.equal(sample(x, t, seeds, offs), sample(x.float(), t, seeds, offs))
    assert torch.equal(sample(x, t, seeds, offs, **kw), sample(x.float(), t, seeds, offs, **kw))


def test_reference_draws_from_its_distribution():
    B, V = 4, 30
    x = torch.randn(B, V) * 2
    t, seeds, offs = params(B, temp=[1.0, 0.0, 0.5, 1.0], device="cpu")
    kw = filters(B, k=[0, 0, 3, 0], p=[0.5, 1.0, 1.0, 1.0], mp=[0, 0, 0, 0.3], device="cpu")
    lp = torch.empty(B)
    tok = sample_ref(x, t, seeds, offs, logprobs_out=lp, **kw)
    probs, logp = sample_probs_ref(x, t, **kw)
    assert (probs.gather(1, tok[:, None]) > 0).all() and tok[1] == x[1].argmax()
    assert torch.equal(lp, logp.gather(1, tok[:, None])[:, 0])


def test_bad_inputs_raise():
    B, V = 3, 20
    x = torch.randn(B, V, device=DEV)
    t, seeds, offs = params(B)
    bad = [
        lambda: sample(x[0], t, seeds, offs),
        lambda: sample(x.long(), t, seeds, offs),
        lambda: sample(x.t(), t[:1].expand(V).contiguous(), seeds, offs),
        lambda: sample(x, t.double(), seeds, offs),
        lambda: sample(x, t[:2], seeds, offs),
        lambda: sample(x, t, seeds.int(), offs),
        lambda: sample(x, t, seeds, offs.float()),
        lambda: sample(x, t, seeds, offs, top_k=torch.ones(B, dtype=torch.int64, device=DEV)),
        lambda: sample(x, t, seeds, offs, top_p=torch.ones(B + 1, device=DEV)),
        lambda: sample(x, t, seeds, offs, min_p=torch.zeros(B, 2, device=DEV)),
        lambda: sample(x, t, seeds, offs, out=torch.empty(B, dtype=torch.int32, device=DEV)),
        lambda: sample(x, t, seeds, offs, logprobs_out=torch.empty(B, dtype=torch.float16, device=DEV)),
        lambda: sample(x, torch.ones(2 * B, device=DEV)[::2], seeds, offs),
    ]
    for i, call in enumerate(bad):
        with pytest.raises(ValueError):
            call()
            pytest.fail(f"bad call {i} did not raise")


@pytest.mark.gpu
def test_gpu_bf16_distribution_and_filters():
    x = peaked_bf16(1, seed=1)
    flat = (torch.randn(1, VOCAB, device=GPU) * 0.5).to(GPU_DTYPE)  # nucleus ~10^5: the general kernel
    cases = [(x, {}, N_DRAWS), (x, dict(k=5), N_DRAWS), (x, dict(p=0.8), N_DRAWS), (x, dict(mp=0.05), N_DRAWS),
             (flat, dict(p=0.9, k=3000), N_DRAWS // 16)]
    for row, spec, n in cases:
        t, seeds, offs = params(n, temp=1.0, seed=99, device=GPU)
        kw = {k: v for k, v in (filters(n, **spec, device=GPU) if spec else {}).items() if v is not None}
        tok = sample(row.expand(n, VOCAB), t, seeds, offs, **kw)
        probs = sample_probs_ref(row, t[:1], **{k: v[:1] for k, v in kw.items()})[0][0]
        assert (probs[tok] > 0).all(), f"{spec}: drew outside the kept set"
        if row is flat:
            continue  # ~3000 near-equal tokens: too few draws per token for a chi-square
        top = probs.topk(11).indices  # 11 cells: the top 10 tokens and everything else
        cell = torch.full((VOCAB,), 10, dtype=torch.long, device=GPU)
        cell[top[:10]] = torch.arange(10, device=GPU)
        counts = torch.bincount(cell[tok], minlength=11).cpu()
        p_cell = torch.zeros(11, dtype=torch.float64, device=GPU).index_add_(0, cell, probs.double()).cpu()
        chi2, df = chi_square(counts, p_cell)
        assert chi2 < CHI2_CRIT[df - 1], f"{spec}: chi2 {chi2:.1f} (df {df})"


@pytest.mark.gpu
def test_gpu_cuda_graph_replay_matches_eager():
    B = 32
    x = peaked_bf16(B, seed=2)
    t, seeds, offs = params(B, temp=[0.0, 0.8] * (B // 2), device=GPU)
    kw = {k: v for k, v in filters(B, k=20, p=0.9, device=GPU).items() if v is not None}
    # flat rows under top-p: every row passes the candidate window, so the replays run the bracket rounds,
    # whose pending-row counts each call must reset
    flat = (torch.randn(B, VOCAB, device=GPU) * 0.5).to(GPU_DTYPE)
    kw_flat = {k: v for k, v in filters(B, p=0.9, device=GPU).items() if v is not None}
    for rows, fkw in ((x, {}), (x, kw), (flat, kw_flat)):
        out, lp = torch.empty(B, dtype=torch.int64, device=GPU), torch.empty(B, device=GPU)
        sample(rows, t, seeds, offs, out=out, logprobs_out=lp, **fkw)  # tune before capture
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            sample(rows, t, seeds, offs, out=out, logprobs_out=lp, **fkw)
        for step in range(3):
            offs.add_(1)
            g.replay()
            lp_eager = torch.empty_like(lp)
            assert torch.equal(out, sample(rows, t, seeds, offs, logprobs_out=lp_eager, **fkw))
            torch.testing.assert_close(lp, lp_eager)
