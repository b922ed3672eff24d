"""Sampling over the Qwen3 vocabulary (151,936): batch {1, 64, 256, 512} x fp32 / bf16 logits, in three modes:
- temperature: plain Gumbel-max at T = 0.7 (one read of the logits);
- top-p: top_p = 0.9 on LLM-like (peaked) logits, the usual case, finished from the candidates;
- top-p flat: top_p = 0.9 on flat logits (nucleus of ~10^5 tokens), the general kernel's slow path.
Bytes: one read of the logits. Peers: the PyTorch recipe (softmax, exponential_, argmax of probs / noise;
for top-p with a sort, cumsum and mask first), eager and torch.compile. Inputs are rotated past the L2 and
batches <= 256 are timed inside a CUDA graph (rowbench.measure). The input sets are seeded, so every run times
the same rows: a top-p time depends on how many rows the candidate window leaves to the bracket rounds
(printed per set).
Knobs (environment): TRITIUM_BENCH_SAMPLING_BATCHES="1,256", TRITIUM_BENCH_SAMPLING_MODES="temperature,top-p",
TRITIUM_BENCH_NO_COMPILE=1.
"""
from __future__ import annotations

import os

import torch

from benchmarks.kernels import rowbench as rb
from tritium.kernels.sampling import sample, sample_filtered

VOCAB = 151_936
BATCHES = [int(b) for b in os.environ.get("TRITIUM_BENCH_SAMPLING_BATCHES", "1,64,256,512").split(",")]
MODES = os.environ.get("TRITIUM_BENCH_SAMPLING_MODES", "temperature,top-p,top-p flat").split(",")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def torch_sample(logits, temperature):
    probs = torch.softmax(logits.float() / temperature[:, None], dim=-1)
    return probs.div_(torch.empty_like(probs).exponential_()).argmax(-1)


def torch_sample_top_p(logits, temperature, top_p):
    probs = torch.softmax(logits.float() / temperature[:, None], dim=-1)
    sp, idx = probs.sort(-1, descending=True)
    sp = sp.masked_fill(sp.cumsum(-1) - sp > top_p[:, None], 0.0)
    pick = sp.div_(torch.empty_like(sp).exponential_()).argmax(-1)
    return idx.gather(-1, pick[:, None])[:, 0]


def _logits(b, dtype, mode):
    if mode == "top-p flat":
        return (torch.randn(b, VOCAB, device=rb.DEVICE) * 0.5).to(dtype)
    x = torch.randn(b, VOCAB, device=rb.DEVICE) * 2  # a normal bulk and a few strong tokens per row
    x.scatter_(1, torch.randint(0, VOCAB, (b, 12), device=rb.DEVICE), 12 + 2 * torch.randn(b, 12, device=rb.DEVICE))
    return x.to(dtype)


def _pending(x, t, seeds, offs, p) -> int:
    """Rows of x the candidate window leaves to the bracket rounds (or the sequential kernel) at top-p p."""
    state = torch.empty(x.shape[0], dtype=torch.int32, device=x.device)
    sample_filtered(x, t, seeds, offs, None, p, None, torch.empty_like(seeds), None, state=state)
    return int((state > 0).sum())


def run(ceilings) -> list:
    rows = []
    for mode in MODES:
        for name, dtype in DTYPES.items():
            for b in BATCHES:
                t = torch.full((b,), 0.7, device=rb.DEVICE)
                seeds = torch.arange(b, device=rb.DEVICE, dtype=torch.int64)
                offs = torch.zeros(b, device=rb.DEVICE, dtype=torch.int64)
                out = torch.empty(b, device=rb.DEVICE, dtype=torch.int64)
                if mode == "temperature":
                    ours = lambda x, t=t, s=seeds, o=offs, out=out: sample(x, t, s, o, out=out)  # noqa: E731
                    ref = lambda x, t=t: torch_sample(x, t)  # noqa: E731
                else:
                    p = torch.full((b,), 0.9, device=rb.DEVICE)
                    ours = lambda x, t=t, s=seeds, o=offs, p=p, out=out: sample(  # noqa: E731
                        x, t, s, o, top_p=p, out=out)
                    ref = lambda x, t=t, p=p: torch_sample_top_p(x, t, p)  # noqa: E731
                make = lambda b=b, dtype=dtype, mode=mode: (_logits(b, dtype, mode),)  # noqa: E731
                n_bytes = b * VOCAB * dtype.itemsize
                if mode != "temperature":
                    torch.manual_seed(b)
                    pending = [_pending(x, t, seeds, offs, p) for (x,) in rb.input_sets(make, n_bytes)]
                    print(f"  {mode} {name} {b}: rows past the candidate window, per input set: {pending}")
                torch.manual_seed(b)  # the same input sets in every run (top-p's time depends on them)
                rows.append(rb.measure(f"sample {mode}", f"{name} {b}x{VOCAB}", b, make, ours, ref, n_bytes=n_bytes))
    return rows
