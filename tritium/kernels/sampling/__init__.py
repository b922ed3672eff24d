"""Token sampling: Gumbel-max with per-row temperature, greedy rows in the same launch, exact top-k / top-p /
min-p, logprobs, and per-request seeds whose draws do not depend on the batch layout (counter-based noise keyed
by seed, step and token id). One entry point, sample().

Read in this order (each module imports only the ones before it):
1. plain.py     Gumbel-max without filters: the noise, the chunk scan, the plain path's two launches.
2. exact.py     top-k / top-p / min-p exactly: semantics, the threshold math the filtered paths share, the
                reference keep_mask_ref, the state a filtered row carries between paths, and general_row,
                the exact sequential draw of one row (the last resort).
3. filtered.py  the fast filtered path: a candidate pass and a finishing kernel that settle rows whose kept
                set lies among a few candidates, leaving the others pending.
4. bracket.py   the pending rows: parallel bracket rounds in one cooperative launch, ending in general_row
                for the rows they leave over.
"""
from __future__ import annotations

import torch
import triton

from tritium.kernels.sampling.bracket import draw_pending
from tritium.kernels.sampling.exact import filter_args, keep_mask_ref
from tritium.kernels.sampling.filtered import FILTER_CONFIGS, sample_candidates
from tritium.kernels.sampling.plain import CONFIGS, sample_plain

__all__ = ["CONFIGS", "FILTER_CONFIGS", "keep_mask_ref", "sample", "sample_filtered", "sample_probs_ref",
           "sample_ref"]


def _check_vec(name, t, n, dtype, device):
    if not isinstance(t, torch.Tensor) or t.dtype != dtype or t.shape != (n,) or t.device != device:
        got = (tuple(t.shape), t.dtype, str(t.device)) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"sample: {name} must be a [{n}] {dtype} tensor on {device}, got {got}")
    if n > 1 and t.stride(0) != 1:
        raise ValueError(f"sample: {name} must be contiguous")


def sample(logits, temperature, seeds, offsets, *, top_k=None, top_p=None, min_p=None, out=None,
           logprobs_out=None, config: triton.Config | None = None):
    """Draw one token per row of logits [B, V] (fp32 / bf16 / fp16, contiguous last dim): temperature [B] fp32
    (0: greedy), seeds and offsets (the step) [B] int64, top_k [B] int32 (0 = off), top_p [B] fp32 (1 = off),
    min_p [B] fp32 (0 = off), each filter None when no row uses it. Writes and returns `out` ([B] int64) and,
    if given, logprobs_out ([B] fp32: the token's log-probability under the kept set). CUDA-graph safe.
    `config` launches the main kernel with one config from CONFIGS (FILTER_CONFIGS when a filter is given)
    instead of the tuned one."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError("sample: logits must be a 2-D [batch, vocab] tensor")
    if logits.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"sample: logits dtype {logits.dtype} not in fp32/bf16/fp16")
    B, V = logits.shape
    if V < 1 or V >= 2**31 - 8 or (V > 1 and logits.stride(1) != 1):
        raise ValueError("sample: logits need 1 <= vocab < 2**31 and a contiguous last dim")
    dev = logits.device
    _check_vec("temperature", temperature, B, torch.float32, dev)
    _check_vec("seeds", seeds, B, torch.int64, dev)
    _check_vec("offsets", offsets, B, torch.int64, dev)
    for name, t, dt in (("top_k", top_k, torch.int32), ("top_p", top_p, torch.float32),
                        ("min_p", min_p, torch.float32)):
        if t is not None:  # None: no row uses this filter
            _check_vec(name, t, B, dt, dev)
    if out is None:
        out = torch.empty(B, dtype=torch.int64, device=dev)
    _check_vec("out", out, B, torch.int64, dev)
    if logprobs_out is not None:
        _check_vec("logprobs_out", logprobs_out, B, torch.float32, dev)
    if B == 0:
        return out
    if top_k is not None or top_p is not None or min_p is not None:
        return sample_filtered(logits, temperature, seeds, offsets, top_k, top_p, min_p, out, logprobs_out, config)
    return sample_plain(logits, temperature, seeds, offsets, out, logprobs_out, config)


def sample_filtered(logits, temperature, seeds, offsets, top_k, top_p, min_p, out, logprobs_out, config=None,
                    state=None, force_general=False):
    """The filtered path of sample() (inputs validated there): the candidate window (filtered.py), then the
    bracket rounds and the sequential draw (bracket.py) for the rows it leaves pending. `state`, if given
    ([B] int32), receives which path drew each row (exact.PATH_*): 0 the candidate window, 1 the bracket
    rounds, 2 the sequential draw (general_row). force_general (tests) makes every row pending."""
    filt, flags = filter_args(temperature, top_k, top_p, min_p, logprobs_out)
    pending = sample_candidates(logits, temperature, seeds, offsets, filt, flags, out, logprobs_out, state, config)
    if force_general:
        pending.make_all_pending()
    lp = logprobs_out if logprobs_out is not None else pending.row_stats
    draw_pending(logits, temperature, seeds, offsets, filt, flags, pending, out, lp)
    return out


def sample_probs_ref(logits, temperature, *, top_k=None, top_p=None, min_p=None):
    """[B, V] fp32: the distribution each row is drawn from (greedy rows: one-hot at the argmax), and
    [B, V] fp32 log-probabilities used for logprobs (softmax over the kept set; greedy rows at T = 1)."""
    x = logits.float()
    greedy = temperature <= 0
    z = x / torch.where(greedy, 1.0, temperature)[:, None]
    keep = keep_mask_ref(z, top_k, top_p, min_p)
    logp = torch.log_softmax(z.masked_fill(~keep, float("-inf")), dim=-1)
    onehot = torch.nn.functional.one_hot(x.argmax(-1), x.shape[1]).float()
    return torch.where(greedy[:, None], onehot, logp.exp()), logp


def sample_ref(logits, temperature, seeds, offsets, *, top_k=None, top_p=None, min_p=None, out=None,
               logprobs_out=None):
    """Plain PyTorch (fp32): softmax, filter, torch.multinomial seeded by (seed, offset). Its draws differ
    from the kernel's; it defines the distribution. Returns [B] int64 token ids."""
    probs, logp = sample_probs_ref(logits, temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    toks = torch.empty(logits.shape[0], dtype=torch.int64)
    for b in range(logits.shape[0]):
        gen = torch.Generator().manual_seed((int(seeds[b]) * 1_000_003 + int(offsets[b])) % 2**63)
        toks[b] = torch.multinomial(probs[b].cpu(), 1, generator=gen)[0]
    toks = toks.to(logits.device)
    if out is not None:
        out.copy_(toks)
    if logprobs_out is not None:
        logprobs_out.copy_(logp.gather(-1, toks[:, None])[:, 0])
    return toks
