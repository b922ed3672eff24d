"""Shared cases of the sampling tests (test_sampling.py: the plain path; test_sampling_filter.py: top-k /
top-p / min-p): parameter tensors, the chi-square check, the masked-plain oracle and the GPU's LLM-like logits."""
import torch

import tritium
from tritium.kernels.sampling import sample

DEV = tritium.platform.DEVICE


def params(B, temp=0.8, seed=1234, device=DEV):
    t = torch.full((B,), temp, dtype=torch.float32) if isinstance(temp, float) else torch.as_tensor(temp).float()
    seeds = torch.full((B,), seed, dtype=torch.int64) if isinstance(seed, int) else torch.as_tensor(seed).long()
    return t.to(device), seeds.to(device), torch.arange(B, dtype=torch.int64).to(device)


def filters(B, k=None, p=None, mp=None, device=DEV):
    def vec(v, dt):
        return None if v is None else torch.as_tensor(v, dtype=dt).expand(B).contiguous().to(device)
    return dict(top_k=vec(k, torch.int32), top_p=vec(p, torch.float32), min_p=vec(mp, torch.float32))


def scaled(x, t):
    return x.float() / torch.where(t > 0, t, 1.0)[:, None]


def chi_square(counts, probs):
    """Pearson chi-square of counts against probs (cells with p > 0), and its degrees of freedom."""
    n = counts.sum()
    keep = probs > 0
    expect = probs[keep].double() * n
    return float(((counts[keep].double() - expect) ** 2 / expect).sum()), int(keep.sum()) - 1


# chi-square quantile at p = 1e-4 for df = 1..12 (false failure rate 1e-4 per check)
CHI2_CRIT = [15.1, 18.4, 21.1, 23.5, 25.7, 27.9, 29.9, 31.8, 33.7, 35.6, 37.4, 39.1]


def masked_plain(x, t, seeds, offs, keep, **kw):
    return sample(x.masked_fill(~keep, float("-inf")), t, seeds, offs, **kw)


# GPU (bf16, Qwen3 vocabulary)
VOCAB = 151_936
GPU, GPU_DTYPE = "cuda", torch.bfloat16  # (a CPU dry run may set "cpu", fp32 and a small VOCAB)
N_DRAWS = 16384


def peaked_bf16(B, seed=0):
    """LLM-like logits: a normal bulk and a few strong tokens per row."""
    V = VOCAB
    g = torch.Generator(device=GPU).manual_seed(seed)
    x = torch.randn(B, V, device=GPU, generator=g) * 2
    top = torch.randint(0, V, (B, 12), device=GPU, generator=g)
    x.scatter_(1, top, 12 + 2 * torch.randn(B, 12, device=GPU, generator=g))
    return x.to(GPU_DTYPE)
