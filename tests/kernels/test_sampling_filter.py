"""Tests of top-k / top-p / min-p sampling (tritium.kernels.sampling: exact.py, filtered.py, bracket.py).

A filtered draw is checked against the plain draw of the same row with the reference's rejected tokens set to
-inf, which must pick the same token since the noise of a token depends only on (seed, step, token); every
path (candidate window, bracket rounds, sequential kernel) must give the reference's kept set; supports and
distributions are checked statistically.
"""
import pytest
import torch
from hypothesis import assume, given, strategies as st

import tritium
from tritium.kernels import cooperative
from tritium.kernels.sampling import (CONFIGS, FILTER_CONFIGS, bracket, filtered, keep_mask_ref, sample,
                                     sample_filtered, sample_probs_ref)
from sampling_cases import CHI2_CRIT, DEV, GPU, chi_square, filters, masked_plain, params, peaked_bf16, scaled


@pytest.mark.parametrize("cfg", FILTER_CONFIGS, ids=tritium.autotune.config_id)
def test_every_filter_config_draws_the_same(cfg, monkeypatch):
    # 16 lanes, 128-token chunks: eight full blocks per chunk (every block fetched ahead), a ragged last chunk
    monkeypatch.setattr(filtered, "FILTER_BLOCK", 16)
    monkeypatch.setattr(filtered, "FILTER_CHUNK", 128)
    B, V = 4, 3000
    x = torch.randn(B, V) * 3
    x[torch.arange(B), torch.tensor([2500, 1234, 77, 2999])] += 12  # strong tokens in late blocks and the tail
    x = x.to(DEV)
    t, seeds, offs = params(B, temp=[0.8, 0.0, 1.0, 0.6])
    kw = filters(B, k=[0, 4, 20, 0], p=[0.9, 1.0, 0.8, 1.0], mp=[0.0, 0.0, 0.05, 0.2])
    tok = sample(x, t, seeds, offs, config=cfg, **kw)
    assert torch.equal(tok, sample(x, t, seeds, offs, config=FILTER_CONFIGS[0], **kw))
    keep = keep_mask_ref(scaled(x, t), **kw)
    assert torch.equal(tok, masked_plain(x, t, seeds, offs, keep))


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
    t, seeds, offs = params(N, temp=1.0)
    kw = dict(top_k=k.to(DEV), top_p=p.to(DEV), min_p=mp.to(DEV))
    tok = sample(x.expand(N, V), t, seeds, offs, **kw).cpu()
    probs, _ = sample_probs_ref(x.expand(N, V), t, **kw)
    for g in range(len(groups)):
        pg = probs[g * n].cpu()
        counts = torch.bincount(tok[g * n:(g + 1) * n], minlength=V)
        assert (counts[pg == 0] == 0).all(), f"group {g} drew outside its kept set"
        if (pg > 0).sum() > 1:
            chi2, df = chi_square(counts, pg)
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


EDGE_EPS = 1e-4  # how far fp32 rounding may move a top-p mass or a min-p ratio (the kernel's against fp64)


def _edge_draws(x, t, seeds, offs, kw, eps):
    """The reference kept sets (fp64) with every active top-p moved to p -+ eps and min-p to min_p (1 +- eps),
    the tightest and the loosest a kernel off by eps may find, and the plain draws over both. Kept sets grow
    with p and shrink with min-p, so every set in between holds the tight one and lies in the loose one: where
    the two draws agree, the winner over any set in between is that token too (the row is decided)."""
    z = scaled(x, t).double()
    p, mp = kw.get("top_p"), kw.get("min_p")
    sets = []
    for sign in (-1, 1):
        p_e = None if p is None else torch.where(p < 1, p + sign * eps, p)
        mp_e = None if mp is None else torch.where(mp > 0, mp * (1 - sign * eps), mp)
        sets.append(keep_mask_ref(z, kw.get("top_k"), p_e, mp_e))
    tight, loose = sets
    assert not (tight & ~loose).any()
    return tight, loose, masked_plain(x, t, seeds, offs, tight), masked_plain(x, t, seeds, offs, loose)


@given(_filtered_case())
def test_filtered_equals_plain_on_reference_kept_set(case):
    x, t, k, p, mp = case
    B, V = x.shape
    x = x.to(DEV)
    t, seeds, offs = params(B, temp=t, seed=list(range(7, 7 + B)))
    kw = filters(B, k=k, p=p, mp=mp)
    z = scaled(x, t)
    assume(not _knife_edge(z, kw).any())
    keep = keep_mask_ref(z, **kw)
    lp, lp_ref = torch.empty(B, device=DEV), torch.empty(B, device=DEV)
    state = torch.empty(B, dtype=torch.int32, device=DEV)
    tok = torch.empty(B, dtype=torch.int64, device=DEV)
    sample_filtered(x, t, seeds, offs, kw["top_k"], kw["top_p"], kw["min_p"], tok, lp, state=state)
    want = masked_plain(x, t, seeds, offs, keep, logprobs_out=lp_ref)
    assert torch.equal(tok, want)
    greedy = t == 0
    torch.testing.assert_close(lp[~greedy], lp_ref[~greedy], atol=1e-5, rtol=1e-5)
    _, logp = sample_probs_ref(x, t, **kw)
    torch.testing.assert_close(lp, logp.gather(1, tok[:, None])[:, 0], atol=1e-5, rtol=1e-5)
    # the general kernel alone finds the same kept sets
    tok_g = torch.empty_like(tok)
    sample_filtered(x, t, seeds, offs, kw["top_k"], kw["top_p"], kw["min_p"], tok_g, None, force_general=True)
    assert torch.equal(tok_g, tok)


def test_tiny_vocabularies_through_the_bracket():
    # chunks of 1-2 tokens: the draw's [BLOCK // 4, 4] tile still has a row
    for V in (1, 2, 3):
        x = torch.randn(3, V).to(DEV)
        t, seeds, offs = params(3, temp=[1.0, 0.0, 0.7])
        kw = filters(3, p=[0.9, 0.5, 0.99])
        want = masked_plain(x, t, seeds, offs, keep_mask_ref(scaled(x, t), **kw))
        tok = torch.full((3,), -1, dtype=torch.int64, device=DEV)
        sample_filtered(x, t, seeds, offs, None, kw["top_p"], None, tok, None, force_general=True)
        assert torch.equal(tok, want)


def test_candidate_windows_and_general_path(monkeypatch):
    # small lanes, chunks and windows so that multi-token lanes, ten chunks, the row window, ties at the
    # top and the general kernel all occur at V = 600
    monkeypatch.setattr(filtered, "FILTER_BLOCK", 16)
    monkeypatch.setattr(filtered, "FILTER_CHUNK", 64)
    monkeypatch.setattr(filtered, "NWIN", 32)
    monkeypatch.setattr(bracket, "ROUND_CHUNK", 64)  # ten work items per pending row
    monkeypatch.setattr(bracket, "DRAW_SMALL", 16)  # windows of 11 to 29 values: narrow tile and wide one
    B, V = 6, 600
    g = torch.Generator().manual_seed(5)
    x = torch.randn(B, V, generator=g) * 0.3  # flat rows: large nuclei, left to the general kernel
    x[:3] = torch.randn(3, V, generator=g) * 3  # peaked rows: finished from the candidates
    x[2, :200] = 12.0  # 200 ties at the top: no lane maximum stands above the others
    x = x.to(DEV)
    t, seeds, offs = params(B, temp=[1.0, 0.7, 1.0, 1.0, 0.0, 1.2])
    kw = filters(B, k=[10, 0, 0, 0, 0, 7], p=[0.8, 0.9, 1.0, 0.9, 0.5, 1.0], mp=[0.0, 0.0, 0.5, 0.0, 0.0, 0.0])
    keep = keep_mask_ref(scaled(x, t), **kw)
    want = masked_plain(x, t, seeds, offs, keep)
    state = torch.empty(B, dtype=torch.int32, device=DEV)
    tok = torch.empty(B, dtype=torch.int64, device=DEV)
    lp = torch.empty(B, device=DEV)  # (with logprobs the greedy row needs its kept set too)
    _, logp = sample_probs_ref(x, t, **kw)
    # 0: drawn from the candidate window, 1: after the bracket rounds, 2: by the sequential kernel (no rounds)
    # 4 programs: one item of ten chunks per pending row; 16: five items of two chunks each (one launch per
    # stage); 1: every stage in one launch, as the cooperative launch runs them on a GPU
    for rounds, programs, paths in ((bracket.ROUNDS, 4, [0, 0, 1, 1, 1, 1]), (bracket.ROUNDS, 16, [0, 0, 1, 1, 1, 1]),
                                    (bracket.ROUNDS, 1, [0, 0, 1, 1, 1, 1]), (0, 4, [0, 0, 1, 2, 2, 2])):
        monkeypatch.setattr(bracket, "ROUNDS", rounds)
        monkeypatch.setattr(cooperative, "INTERPRET_PROGRAMS", programs)
        tok.fill_(-1)  # a row no kernel draws must not pass on the previous iteration's token
        lp.fill_(float("nan"))
        sample_filtered(x, t, seeds, offs, kw["top_k"], kw["top_p"], kw["min_p"], tok, lp, state=state)
        assert state.tolist() == paths
        assert torch.equal(tok, want)
        torch.testing.assert_close(lp, logp.gather(1, tok[:, None])[:, 0], atol=1e-5, rtol=1e-5)
    monkeypatch.setattr(filtered, "CAPC", 2)  # more lane maxima than slots: those chunks give no candidates
    tok.fill_(-1)
    sample_filtered(x, t, seeds, offs, kw["top_k"], kw["top_p"], kw["min_p"], tok, None, state=state)
    assert torch.equal(tok, want)


@pytest.mark.gpu
def test_gpu_bf16_greedy_layout_and_configs():
    B = 64
    x = peaked_bf16(B)
    t, seeds, offs = params(B, temp=[0.0, 0.7, 1.0, 1.3] * (B // 4), seed=list(range(B)), device=GPU)
    want = x.float().argmax(-1)  # bf16 logits tie often: lowest id
    kw = filters(B, k=[0, 20, 0, 50] * (B // 4), p=[0.95, 1.0, 0.8, 0.9] * (B // 4),
                  mp=[0.0, 0.0, 0.05, 0.0] * (B // 4), device=GPU)
    perm = torch.randperm(B, device=GPU)
    for fkw in ({}, kw):
        tok = sample(x, t, seeds, offs, **fkw)
        assert torch.equal(tok[::4], want[::4])
        pkw = {k: v[perm] for k, v in fkw.items()}
        assert torch.equal(sample(x[perm], t[perm], seeds[perm], offs[perm], **pkw), tok[perm])
        cfgs = CONFIGS if not fkw else FILTER_CONFIGS
        for cfg in cfgs:
            assert torch.equal(sample(x, t, seeds, offs, config=cfg, **fkw), tok)
    # Every row is judged: a row's token must be the plain draw over its reference kept set, unless that draw
    # changes when the top-p / min-p boundaries move by EDGE_EPS (a knife edge the kernel's fp32 sums may fall
    # on either side of); such a row's token must still lie in the widest of those kept sets.
    _, loose, want_tight, want_loose = _edge_draws(x, t, seeds, offs, kw, EDGE_EPS)
    decided = want_tight == want_loose
    tok = sample(x, t, seeds, offs, **kw)
    assert torch.equal(tok[decided], want_tight[decided])
    assert loose.gather(1, tok[:, None]).all()
    state = torch.empty(B, dtype=torch.int32, device=GPU)
    tok = torch.empty(B, dtype=torch.int64, device=GPU)
    sample_filtered(x, t, seeds, offs, kw["top_k"], kw["top_p"], kw["min_p"], tok, None, state=state)
    tok_g = torch.empty_like(tok)
    sample_filtered(x, t, seeds, offs, kw["top_k"], kw["top_p"], kw["min_p"], tok_g, None, force_general=True)
    assert torch.equal(tok_g, tok)
    assert (state == 0).float().mean() > 0.9, "peaked rows should finish from the candidates"
