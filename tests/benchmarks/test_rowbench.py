"""rowbench.measure's bookkeeping, on the CPU with the timer replaced: each contender keeps its best of the
rounds, a peer that fails in every round is left out, and the peer ratios are taken against ours with its
outputs allocated per call (the peers' convention) where that was timed."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, where `benchmarks` lives
from benchmarks.kernels import rowbench as rb  # noqa: E402


def _scripted_timer(monkeypatch, times: dict):
    """Replace rowbench's timers: the n-th timing of contender `name` returns times[name][n]."""
    calls = {}

    def fake(fn, n_calls, label):
        fn()  # the cycled callable runs as it would under the real timer
        name = label.rsplit(" ", 1)[1]
        k = calls.get(name, 0)
        calls[name] = k + 1
        return times[name][k]

    monkeypatch.setattr(rb, "_time", fake)
    monkeypatch.setattr(rb, "_time_or_none", fake)
    monkeypatch.setattr(rb, "compiled_or_none", lambda ref: ref)  # no compile on the CPU
    monkeypatch.setattr(rb, "ROUNDS", 2)
    return calls


def _measure(**kw):
    x = torch.randn(4, 8)
    return rb.measure("k", "s", 4, lambda: (x.clone(),), lambda a: a * 2, lambda a: a * 2, n_bytes=2 * x.numel() * 4, **kw)


def test_best_of_rounds_and_ratios_against_the_allocated_timing(monkeypatch):
    calls = _scripted_timer(monkeypatch, {"ours": [2.0, 1.8], "alloc": [1.6, 1.7], "eager": [10.0, 9.0],
                                          "compile": [1.7, 1.5]})
    row = _measure(ours_alloc=lambda a: a * 2)
    assert calls == {"ours": 2, "alloc": 2, "eager": 2, "compile": 2}
    assert row.us == 1.8 and row.us_alloc == 1.6
    assert row.peers == {"eager": 9.0, "compile": 1.5}
    assert row.peer_ratios() == pytest.approx({"eager": 9.0 / 1.6, "compile": 1.5 / 1.6})
    assert row.gbps() == pytest.approx(row.bytes / 1.8e-6 / 1e9)  # bandwidth from the static-output timing


def test_without_an_allocated_variant_the_ratios_use_ours(monkeypatch):
    _scripted_timer(monkeypatch, {"ours": [3.0, 4.0], "eager": [None, 6.0], "compile": [None, None]})
    row = _measure()
    assert row.us == 3.0 and row.us_alloc is None
    assert row.peers == {"eager": 6.0, "compile": None}
    assert row.peer_ratios() == {"eager": 2.0}
