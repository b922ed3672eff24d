"""Programmatic dependent launch (autotune.pdl_launch): a kernel launched that way may start while the one
before it runs, so each must wait (gdc_wait) before it reads what that one wrote or writes what it reads.
A decode layer's chain of such kernels (projections, RoPE + KV store, split attention and its merge, all
reading and writing one residual stream in place) replayed from a CUDA graph with PDL on must equal the
same chain run eagerly with PDL off, bit for bit, on every replay. On the CPU: the PDL variants compile for
sm_90 with the wait ahead of every load of another kernel's output."""
import pytest
import torch

import tritium.autotune as autotune
from tritium.kernels.decode_attention import decode_attention
from tritium.kernels.rope import qk_norm_rope, rope_cos_sin
from tritium.kernels.skinny_linear import skinny_linear
from sm90 import run_script

HQ, HKV, D, HIDDEN, INTER, BLOCK = 16, 8, 128, 1024, 3072, 16


def test_pdl_variants_wait_before_loading_what_other_kernels_wrote():
    loads = run_script("pdl_ptx.py")
    assert set(loads) == {"skinny_linear", "decode_split", "decode_merge", "rope"}
    for name, got in loads.items():
        assert got["waits"] == 1 and got["after"] > 0, (name, got)
        # only the few-row projection loads before its wait: the first chunk of its weight (8 vector loads)
        assert got["before"] == (8 if name == "skinny_linear" else 0), (name, got)


def _layer_weights(g):
    def w(n, k):
        return (torch.randn(n, k, generator=g, device="cuda") * k ** -0.5).bfloat16()

    def gain(n):
        return (torch.rand(n, generator=g, device="cuda") + 0.5).bfloat16()

    return dict(qkv=w((HQ + 2 * HKV) * D, HIDDEN), o=w(HIDDEN, HQ * D), gate_up=w(2 * INTER, HIDDEN),
                down=w(HIDDEN, INTER), ln1=gain(HIDDEN), ln2=gain(HIDDEN), qn=gain(D), kn=gain(D),
                kc=torch.randn(64, BLOCK, HKV, D, generator=g, device="cuda").bfloat16(),
                vc=torch.randn(64, BLOCK, HKV, D, generator=g, device="cuda").bfloat16())


def _decode_step(layers, res, positions, slots, seq_lens, tables, cos_sin):
    """The few-row decode layers of the model (decoder.DecoderLayer), on kernels alone; res updated in place."""
    m = res.shape[0]
    for p in layers:
        qkv = skinny_linear(res, p["qkv"], norm=(p["ln1"], 1e-6))
        q, k, v = qkv.split([HQ * D, HKV * D, HKV * D], dim=-1)
        q, k, v = q.view(m, HQ, D), k.view(m, HKV, D), v.view(m, HKV, D)
        qk_norm_rope(q, k, p["qn"], p["kn"], 1e-6, positions, cos_sin, cache=(v, p["kc"], p["vc"], slots))
        o = decode_attention(q, p["kc"], p["vc"], seq_lens, tables, D ** -0.5, num_splits=4)
        skinny_linear(o.view(m, HQ * D), p["o"], out=res, accumulate=True)
        gate_up = skinny_linear(res, p["gate_up"], norm=(p["ln2"], 1e-6))
        skinny_linear(gate_up, p["down"], gated=True, out=res, accumulate=True)


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [1, 2])
def test_graph_with_pdl_equals_eager_without(rows, monkeypatch):
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("programmatic dependent launch needs a Hopper or newer GPU")
    g = torch.Generator(device="cuda").manual_seed(rows)
    layers = [_layer_weights(g) for _ in range(4)]
    cos_sin = rope_cos_sin(D, 4096, 1e6, device="cuda")
    lens = [700, 333][:rows]  # contexts including the new token, over 4 splits
    tables = torch.randperm(64, generator=g, device="cuda")[:2 * 44].view(2, 44)[:rows].int().contiguous()
    positions = torch.tensor([n - 1 for n in lens], device="cuda")
    slots = torch.stack([tables[b, (n - 1) // BLOCK] * BLOCK + (n - 1) % BLOCK for b, n in enumerate(lens)])
    seq_lens = torch.tensor(lens, dtype=torch.int32, device="cuda")
    start = torch.randn(rows, HIDDEN, generator=g, device="cuda").bfloat16()
    res = start.clone()

    monkeypatch.setattr(autotune, "PDL", False)
    _decode_step(layers, res, positions, slots, seq_lens, tables, cos_sin)  # tunes any untuned key eagerly
    res.copy_(start)
    _decode_step(layers, res, positions, slots, seq_lens, tables, cos_sin)
    want = res.clone()

    monkeypatch.setattr(autotune, "PDL", True)
    res.copy_(start)
    _decode_step(layers, res, positions, slots, seq_lens, tables, cos_sin)  # compiles the PDL variants
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        _decode_step(layers, res, positions, slots, seq_lens, tables, cos_sin)
    for _ in range(20):
        res.copy_(start)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(res, want)
