"""Tests of tritium.kernels.sampling (plain path) and tritium.kernels.sampling_filter (top-k/top-p/min-p).

Draws are tested three ways: exactly (greedy rows against argmax; a filtered draw against the plain draw
of the same row with the reference's rejected tokens set to -inf, which must pick the same token since the
noise of a token depends only on (seed, step, token)); for invariance (configs, chunkings, batch layouts,
the candidate path against the general path); and statistically (many offsets of one row in one launch
against the reference distribution, with a chi-square bound that the wrong distribution fails).
"""
import pytest
import torch
from hypothesis import assume, given, strategies as st

import tritium
from tritium.kernels import sampling as S
from tritium.kernels import sampling_bracket as B_
from tritium.kernels import sampling_filter as F
from tritium.kernels.sampling import sample, sample_probs_ref, sample_ref
from tritium.kernels.sampling_threshold import keep_mask_ref

DEV = tritium.platform.DEVICE


def _params(B, temp=0.8, seed=1234, device=DEV):
    t = torch.full((B,), temp, dtype=torch.float32) if isinstance(temp, float) else torch.as_tensor(temp).float()
    seeds = torch.full((B,), seed, dtype=torch.int64) if isinstance(seed, int) else torch.as_tensor(seed).long()
    return t.to(device), seeds.to(device), torch.arange(B, dtype=torch.int64).to(device)


def _filters(B, k=None, p=None, mp=None, device=DEV):
    def vec(v, dt):
        return None if v is None else torch.as_tensor(v, dtype=dt).expand(B).contiguous().to(device)
    return dict(top_k=vec(k, torch.int32), top_p=vec(p, torch.float32), min_p=vec(mp, torch.float32))


def _scaled(x, t):
    return x.float() / torch.where(t > 0, t, 1.0)[:, None]


def _chi2(counts, probs):
    """Pearson chi-square of counts against probs (cells with p > 0), and its degrees of freedom."""
    n = counts.sum()
    keep = probs > 0
    expect = probs[keep].double() * n
    return float(((counts[keep].double() - expect) ** 2 / expect).sum()), int(keep.sum()) - 1


# chi-square quantile at p = 1e-4 for df = 1..12 (false failure rate 1e-4 per check)
CHI2_CRIT = [15.1, 18.4, 21.1, 23.5, 25.7, 27.9, 29.9, 31.8, 33.7, 35.6, 37.4, 39.1]


def _masked_plain(x, t, seeds, offs, keep, **kw):
    return sample(x.masked_fill(~keep, float("-inf")), t, seeds, offs, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_greedy_is_argmax_lowest_id_across_chunks(dtype):
    B, V = 6, 9000  # three plain chunks of 4096; five filter blocks per lane
    x = torch.randn(B, V).to(dtype)
    x[0, [5, 8500]] = 9.0
    x[1, [4095, 4096]] = 9.0  # tie across a chunk boundary
    x[2, [100, 8999]] = 9.0
    t, seeds, offs = _params(B, temp=[0.0, 0.0, 0.0, 0.0, 0.9, 1.3])
    x, t = x.to(DEV), t.to(DEV)
    want = x.float().argmax(-1)
    assert want[:3].tolist() == [5, 4095, 100]
    tok = sample(x, t, seeds, offs)
    assert torch.equal(tok[:4], want[:4])
    kw = _filters(B, k=[3, 0, 0, 5, 5, 0], p=[1.0, 0.5, 1.0, 0.9, 1.0, 0.9], mp=[0.0, 0.0, 0.3, 0.1, 0.0, 0.0])
    tok_f = sample(x, t, seeds, offs, **kw)
    assert torch.equal(tok_f[:4], want[:4])
    keep = keep_mask_ref(_scaled(x, t), **kw)
    assert keep.gather(1, tok_f[:, None]).all()


def test_logprobs_match_reference():
    B, V = 6, 50
    x = (torch.randn(B, V) * 2).to(DEV)
    t, seeds, offs = _params(B, temp=[1.0, 0.0, 0.7, 1.3, 0.0, 2.0])
    filt = _filters(B, k=[3, 0, 5, 1, 2, 0], p=[1.0, 0.9, 0.5, 1.0, 1.0, 0.3], mp=[0, 0, 0, 0, 0.1, 0.2])
    for kw in (_filters(B), filt):
        kw = {k: v for k, v in kw.items() if v is not None}
        lp = torch.empty(B, device=DEV)
        tok = sample(x, t, seeds, offs, logprobs_out=lp, **kw)
        probs, logp = sample_probs_ref(x, t, **kw)
        assert (probs.gather(1, tok[:, None]) > 0).all()
        torch.testing.assert_close(lp, logp.gather(1, tok[:, None])[:, 0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cfg", S.CONFIGS, ids=tritium.autotune.config_id)
def test_every_config_draws_the_same(cfg):
    B, V = 5, 3000  # one chunk: full blocks and a ragged tail for every BLOCK
    x = (torch.randn(B, V) * 3).to(DEV)
    t, seeds, offs = _params(B, temp=[0.8, 0.0, 1.0, 0.5, 2.0], seed=[1, 2, 3, 4, 2**40 + 5])
    lp = torch.empty(B, device=DEV)
    tok = sample(x, t, seeds, offs, logprobs_out=lp, config=cfg)
    assert torch.equal(tok, sample(x, t, seeds, offs, config=S.CONFIGS[0]))
    _, logp = sample_probs_ref(x, t)
    torch.testing.assert_close(lp, logp.gather(1, tok[:, None])[:, 0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cfg", F.FILTER_CONFIGS, ids=tritium.autotune.config_id)
def test_every_filter_config_draws_the_same(cfg):
    B, V = 4, 3000  # two blocks per lane, the second ragged
    x = (torch.randn(B, V) * 3).to(DEV)
    t, seeds, offs = _params(B, temp=[0.8, 0.0, 1.0, 0.6])
    kw = _filters(B, k=[0, 4, 20, 0], p=[0.9, 1.0, 0.8, 1.0], mp=[0.0, 0.0, 0.05, 0.2])
    tok = sample(x, t, seeds, offs, config=cfg, **kw)
    assert torch.equal(tok, sample(x, t, seeds, offs, config=F.FILTER_CONFIGS[0], **kw))
    keep = keep_mask_ref(_scaled(x, t), **kw)
    assert torch.equal(tok, _masked_plain(x, t, seeds, offs, keep))


def test_draws_independent_of_batch_layout_and_chunking(monkeypatch):
    V = 9000
    rows = (torch.randn(3, V) * 3).to(DEV)
    t = torch.tensor([0.7, 1.0, 0.0], device=DEV)
    seeds = torch.tensor([11, 2**35 + 7, 5], device=DEV)
    offs = torch.tensor([3, 0, 9], device=DEV)
    kw = _filters(3, k=[0, 8, 0], p=[0.7, 1.0, 0.9])
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
    assert S.plan_chunks(3, V)[0] == 3
    monkeypatch.setattr(S, "TARGET_PROGRAMS", 1)  # one chunk per row instead of three
    assert S.plan_chunks(3, V)[0] == 1
    assert torch.equal(sample(rows, t, seeds, offs), three_chunks)


def test_plain_distribution_matches_softmax():
    N, V = 600, 10
    x = (torch.randn(1, V, generator=torch.Generator().manual_seed(7)) * 1.5).to(DEV)
    t, seeds, offs = _params(N, temp=0.7)
    tok = sample(x.expand(N, V), t, seeds, offs)  # one row, 600 steps, one launch
    counts = torch.bincount(tok.cpu(), minlength=V)
    probs, _ = sample_probs_ref(x, t[:1])
    chi2, df = _chi2(counts, probs[0].cpu())
    assert chi2 < CHI2_CRIT[df - 1], f"chi2 {chi2:.1f} (df {df})"
    wrong = torch.softmax(x[0].float().cpu(), -1)  # temperature ignored: must be rejected
    assert _chi2(counts, wrong)[0] > CHI2_CRIT[df - 1]


def test_filtered_distributions_and_supports():
    n, V = 100, 10
    x = (torch.randn(1, V, generator=torch.Generator().manual_seed(3)) * 1.5).to(DEV)
    groups = [dict(k=3), dict(p=0.6), dict(mp=0.2), dict(k=5, p=0.8, mp=0.1)]
    N = n * len(groups)
    k = torch.zeros(N, dtype=torch.int32)
    p = torch.ones(N)
    mp = torch.zeros(N)
    for g, spec in enumerate(groups):
        k[g * n:(g + 1) * n] = spec.get("k", 0)
        p[g * n:(g + 1) * n] = spec.get("p", 1.0)
        mp[g * n:(g + 1) * n] = spec.get("mp", 0.0)
    t, seeds, offs = _params(N, temp=1.0)
    kw = dict(top_k=k.to(DEV), top_p=p.to(DEV), min_p=mp.to(DEV))
    tok = sample(x.expand(N, V), t, seeds, offs, **kw).cpu()
    probs, _ = sample_probs_ref(x.expand(N, V), t, **kw)
    for g in range(len(groups)):
        pg = probs[g * n].cpu()
        counts = torch.bincount(tok[g * n:(g + 1) * n], minlength=V)
        assert (counts[pg == 0] == 0).all(), f"group {g} drew outside its kept set"
        if (pg > 0).sum() > 1:
            chi2, df = _chi2(counts, pg)
            assert chi2 < CHI2_CRIT[df - 1], f"group {g}: chi2 {chi2:.1f} (df {df})"


@st.composite
def _filtered_case(draw):
    B, V = 6, draw(st.sampled_from([12, 40, 100]))
    quant = draw(st.booleans())  # coarse logits: many ties
    x = torch.randn(B, V, generator=torch.Generator().manual_seed(draw(st.integers(0, 2**31))))
    x = (x * draw(st.sampled_from([0.5, 2.0, 5.0])))
    x = torch.round(x * 2) / 2 if quant else x
    t = [draw(st.sampled_from([0.0, 0.5, 1.0, 1.7])) for _ in range(B)]
    k = [draw(st.sampled_from([0, 0, 1, 2, 5, V - 1, V + 3])) for _ in range(B)]
    p = [draw(st.sampled_from([1.0, 1.0, 0.05, 0.3, 0.7, 0.95])) for _ in range(B)]
    mp = [draw(st.sampled_from([0.0, 0.0, 0.02, 0.3])) for _ in range(B)]
    return x, t, k, p, mp


def _knife_edge(z, kw, margin=1e-5):
    """[B] bool: rows whose top-p or min-p boundary lies within margin, where fp32 rounding order (the
    reference's against the kernel's) may flip a boundary token. For top-p only the crossing matters: the mass
    just before and just after the token where the cumulative sum reaches p (a long flat tail elsewhere is no
    risk); for min-p, any token whose probability ratio to the best sits at the threshold."""
    probs = torch.softmax(z, -1)
    cum = probs.sort(-1, descending=True).values.cumsum(-1)
    edge = torch.zeros(z.shape[0], dtype=torch.bool, device=z.device)
    if kw.get("top_p") is not None:
        p = kw["top_p"][:, None]
        cross = (cum < p).sum(-1, keepdim=True).clamp(max=cum.shape[-1] - 1)
        after = cum.gather(-1, cross)
        before = torch.where(cross > 0, cum.gather(-1, (cross - 1).clamp(min=0)), torch.zeros_like(after))
        near = ((after - p).abs() <= margin) | ((p - before).abs() <= margin)
        edge |= ((p < 1) & near)[:, 0]
    if kw.get("min_p") is not None:
        mp = kw["min_p"][:, None]
        edge |= ((mp > 0) & ((probs / probs.amax(-1, keepdim=True) - mp).abs() <= margin)).any(-1)
    return edge


@given(_filtered_case())
def test_filtered_equals_plain_on_reference_kept_set(case):
    x, t, k, p, mp = case
    B, V = x.shape
    x = x.to(DEV)
    t, seeds, offs = _params(B, temp=t, seed=list(range(7, 7 + B)))
    kw = _filters(B, k=k, p=p, mp=mp)
    z = _scaled(x, t)
    assume(not _knife_edge(z, kw).any())
    keep = keep_mask_ref(z, **kw)
    lp, lp_ref = torch.empty(B, device=DEV), torch.empty(B, device=DEV)
    state = torch.empty(B, dtype=torch.int32, device=DEV)
    tok = torch.empty(B, dtype=torch.int64, device=DEV)
    F.sample_filtered(x, t, seeds, offs, kw["top_k"], kw["top_p"], kw["min_p"], tok, lp, state=state)
    want = _masked_plain(x, t, seeds, offs, keep, logprobs_out=lp_ref)
    assert torch.equal(tok, want)
    greedy = t == 0
    torch.testing.assert_close(lp[~greedy], lp_ref[~greedy], atol=1e-5, rtol=1e-5)
    _, logp = sample_probs_ref(x, t, **kw)
    torch.testing.assert_close(lp, logp.gather(1, tok[:, None])[:, 0], atol=1e-5, rtol=1e-5)
    # the general kernel alone finds the same kept sets
    tok_g = torch.empty_like(tok)
    F.sample_filtered(x, t, seeds, offs, kw["top_k"], kw["top_p"], kw["min_p"], tok_g, None, force_general=True)
    assert torch.equal(tok_g, tok)


def test_candidate_windows_and_general_path(monkeypatch):
    # small lanes, chunks and windows so that multi-token lanes, ten chunks, the row window, ties at the
    # top and the general kernel all occur at V = 600
    monkeypatch.setattr(F, "FILTER_BLOCK", 16)
    monkeypatch.setattr(F, "FILTER_CHUNK", 64)
    monkeypatch.setattr(F, "NWIN", 32)
    monkeypatch.setattr(B_, "ROUND_CHUNK", 64)  # ten work items per pending row
    B, V = 6, 600
    g = torch.Generator().manual_seed(5)
    x = torch.randn(B, V, generator=g) * 0.3  # flat rows: large nuclei, left to the general kernel
    x[:3] = torch.randn(3, V, generator=g) * 3  # peaked rows: finished from the candidates
    x[2, :200] = 12.0  # 200 ties at the top: no lane maximum stands above the others
    x = x.to(DEV)
    t, seeds, offs = _params(B, temp=[1.0, 0.7, 1.0, 1.0, 0.0, 1.2])
    kw = _filters(B, k=[10, 0, 0, 0, 0, 7], p=[0.8, 0.9, 1.0, 0.9, 0.5, 1.0], mp=[0.0, 0.0, 0.5, 0.0, 0.0, 0.0])
    keep = keep_mask_ref(_scaled(x, t), **kw)
    want = _masked_plain(x, t, seeds, offs, keep)
    state = torch.empty(B, dtype=torch.int32, device=DEV)
    tok = torch.empty(B, dtype=torch.int64, device=DEV)
    lp = torch.empty(B, device=DEV)  # (with logprobs the greedy row needs its kept set too)
    _, logp = sample_probs_ref(x, t, **kw)
    # 0: drawn from the candidate window, 1: after the bracket rounds, 2: by the sequential kernel (no rounds)
    # 4 programs: one item of ten chunks per pending row; 16: five items of two chunks each
    for rounds, programs, paths in ((B_.ROUNDS, 4, [0, 0, 1, 1, 1, 1]), (B_.ROUNDS, 16, [0, 0, 1, 1, 1, 1]),
                                    (0, 4, [0, 0, 1, 2, 2, 2])):
        monkeypatch.setattr(B_, "ROUNDS", rounds)
        monkeypatch.setattr(B_, "INTERPRET_PROGRAMS", programs)
        F.sample_filtered(x, t, seeds, offs, kw["top_k"], kw["top_p"], kw["min_p"], tok, lp, state=state)
        assert state.tolist() == paths
        assert torch.equal(tok, want)
        torch.testing.assert_close(lp, logp.gather(1, tok[:, None])[:, 0], atol=1e-5, rtol=1e-5)
    monkeypatch.setattr(F, "CAPC", 2)  # more lane maxima than slots: those chunks give no candidates
    F.sample_filtered(x, t, seeds, offs, kw["top_k"], kw["top_p"], kw["min_p"], tok, None, state=state)
    assert torch.equal(tok, want)


def test_fp16_draws_match_fp32_of_the_same_values():
    B, V = 4, 300
    x = (torch.randn(B, V) * 3).half().to(DEV)
    t, seeds, offs = _params(B, temp=[1.0, 0.5, 0.0, 1.5])
    kw = {k: v for k, v in _filters(B, k=[0, 5, 3, 0], p=[0.9, 1.0, 1.0, 0.8]).items() if v is not None}
    assert torch.equal(sample(x, t, seeds, offs), sample(x.float(), t, seeds, offs))
    assert torch.equal(sample(x, t, seeds, offs, **kw), sample(x.float(), t, seeds, offs, **kw))


def test_reference_draws_from_its_distribution():
    B, V = 4, 30
    x = torch.randn(B, V) * 2
    t, seeds, offs = _params(B, temp=[1.0, 0.0, 0.5, 1.0], device="cpu")
    kw = _filters(B, k=[0, 0, 3, 0], p=[0.5, 1.0, 1.0, 1.0], mp=[0, 0, 0, 0.3], device="cpu")
    lp = torch.empty(B)
    tok = sample_ref(x, t, seeds, offs, logprobs_out=lp, **kw)
    probs, logp = sample_probs_ref(x, t, **kw)
    assert (probs.gather(1, tok[:, None]) > 0).all() and tok[1] == x[1].argmax()
    assert torch.equal(lp, logp.gather(1, tok[:, None])[:, 0])


def test_bad_inputs_raise():
    B, V = 3, 20
    x = torch.randn(B, V, device=DEV)
    t, seeds, offs = _params(B)
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


# ---------------------------------------------------------------- GPU (bf16, Qwen3 vocabulary) ----
VOCAB = 151_936
GPU, GPU_DTYPE = "cuda", torch.bfloat16  # (a CPU dry run may set "cpu", fp32 and a small VOCAB)
N_DRAWS = 16384


def _peaked_bf16(B, seed=0):
    """LLM-like logits: a normal bulk and a few strong tokens per row."""
    V = VOCAB
    g = torch.Generator(device=GPU).manual_seed(seed)
    x = torch.randn(B, V, device=GPU, generator=g) * 2
    top = torch.randint(0, V, (B, 12), device=GPU, generator=g)
    x.scatter_(1, top, 12 + 2 * torch.randn(B, 12, device=GPU, generator=g))
    return x.to(GPU_DTYPE)


@pytest.mark.gpu
def test_gpu_bf16_greedy_layout_and_configs():
    B = 64
    x = _peaked_bf16(B)
    t, seeds, offs = _params(B, temp=[0.0, 0.7, 1.0, 1.3] * (B // 4), seed=list(range(B)), device=GPU)
    want = x.float().argmax(-1)  # bf16 logits tie often: lowest id
    kw = _filters(B, k=[0, 20, 0, 50] * (B // 4), p=[0.95, 1.0, 0.8, 0.9] * (B // 4),
                  mp=[0.0, 0.0, 0.05, 0.0] * (B // 4), device=GPU)
    perm = torch.randperm(B, device=GPU)
    for fkw in ({}, kw):
        tok = sample(x, t, seeds, offs, **fkw)
        assert torch.equal(tok[::4], want[::4])
        pkw = {k: v[perm] for k, v in fkw.items()}
        assert torch.equal(sample(x[perm], t[perm], seeds[perm], offs[perm], **pkw), tok[perm])
        cfgs = S.CONFIGS if not fkw else F.FILTER_CONFIGS
        for cfg in cfgs:
            assert torch.equal(sample(x, t, seeds, offs, config=cfg, **fkw), tok)
    keep = keep_mask_ref(_scaled(x, t), **kw)
    clear = ~_knife_edge(_scaled(x, t), kw)
    # Rows whose nucleus ends in the flat tail (crossing token below the margin) are skipped; at least a
    # quarter of the rows (16) must still be compared token for token.
    assert clear.float().mean() >= 0.25
    assert torch.equal(sample(x, t, seeds, offs, **kw)[clear], _masked_plain(x, t, seeds, offs, keep)[clear])
    state = torch.empty(B, dtype=torch.int32, device=GPU)
    tok = torch.empty(B, dtype=torch.int64, device=GPU)
    F.sample_filtered(x, t, seeds, offs, kw["top_k"], kw["top_p"], kw["min_p"], tok, None, state=state)
    tok_g = torch.empty_like(tok)
    F.sample_filtered(x, t, seeds, offs, kw["top_k"], kw["top_p"], kw["min_p"], tok_g, None, force_general=True)
    assert torch.equal(tok_g, tok)
    assert (state == 0).float().mean() > 0.9, "peaked rows should finish from the candidates"


@pytest.mark.gpu
def test_gpu_bf16_distribution_and_filters():
    x = _peaked_bf16(1, seed=1)
    flat = (torch.randn(1, VOCAB, device=GPU) * 0.5).to(GPU_DTYPE)  # nucleus ~10^5: the general kernel
    cases = [(x, {}, N_DRAWS), (x, dict(k=5), N_DRAWS), (x, dict(p=0.8), N_DRAWS), (x, dict(mp=0.05), N_DRAWS),
             (flat, dict(p=0.9, k=3000), N_DRAWS // 16)]
    for row, spec, n in cases:
        t, seeds, offs = _params(n, temp=1.0, seed=99, device=GPU)
        kw = {k: v for k, v in (_filters(n, **spec, device=GPU) if spec else {}).items() if v is not None}
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
        chi2, df = _chi2(counts, p_cell)
        assert chi2 < CHI2_CRIT[df - 1], f"{spec}: chi2 {chi2:.1f} (df {df})"


@pytest.mark.gpu
def test_gpu_cuda_graph_replay_matches_eager():
    B = 32
    x = _peaked_bf16(B, seed=2)
    t, seeds, offs = _params(B, temp=[0.0, 0.8] * (B // 2), device=GPU)
    kw = {k: v for k, v in _filters(B, k=20, p=0.9, device=GPU).items() if v is not None}
    for fkw in ({}, kw):
        out, lp = torch.empty(B, dtype=torch.int64, device=GPU), torch.empty(B, device=GPU)
        sample(x, t, seeds, offs, out=out, logprobs_out=lp, **fkw)  # tune before capture
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            sample(x, t, seeds, offs, out=out, logprobs_out=lp, **fkw)
        for step in range(3):
            offs.add_(1)
            g.replay()
            lp_eager = torch.empty_like(lp)
            assert torch.equal(out, sample(x, t, seeds, offs, logprobs_out=lp_eager, **fkw))
            torch.testing.assert_close(lp, lp_eager)
