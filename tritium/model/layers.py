"""Tensor-parallel-ready layers. Each parameter holds only this rank's shard and carries a `weight_loader`
that cuts that shard out of the full checkpoint tensor, so the loader never needs to know the layout.

With tensor parallel size 1 (no process group) every layer is the plain one. Matmuls go through torch (cuBLAS),
except a CUDA matmul of at most FEW_ROWS rows (decode at batch 1-2): that one streams the weight through
tritium's few-row kernel, which cuBLAS's few-row tiles trail there (on an H100 the kernel wins at 1-2 rows and
loses from 4, benchmarks/results/h100/skinny_linear.json). Work around a projection is taken in as options,
each fused into the few-row kernel when it runs and a launch of its own otherwise:
`norm=` an RMSNorm of the input (column-parallel layers), `gated=True` SiLU-and-mul of [gate | up] and
`add_to=` the residual add of the output, in place (row-parallel layers).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from tritium.kernels.activation import silu_and_mul
from tritium.kernels.rmsnorm import rms_norm
from tritium.kernels.skinny_linear import skinny_linear

FEW_ROWS = 2  # the most rows that take the few-row kernel (it takes up to skinny_linear.MAX_ROWS)


def tp_rank_and_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _divide(n: int, d: int, what: str) -> int:
    if n % d:
        raise ValueError(f"{what}={n} is not divisible by tensor parallel size {d}")
    return n // d


def default_weight_loader(param: nn.Parameter, loaded: torch.Tensor) -> None:
    if param.shape != loaded.shape:
        raise ValueError(f"shape mismatch: checkpoint {tuple(loaded.shape)} vs parameter {tuple(param.shape)}")
    param.data.copy_(loaded)


def few_rows(x: torch.Tensor) -> bool:
    """Whether x [T, in] goes to the few-row kernel: on a GPU, 1 to FEW_ROWS rows, last dim contiguous."""
    return x.is_cuda and x.dim() == 2 and 1 <= x.shape[0] <= FEW_ROWS and x.stride(1) == 1


def matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, out: torch.Tensor | None = None,
           *, gated: bool = False, norm=None, accumulate: bool = False) -> torch.Tensor:
    """x @ weight^T (+ bias), into `out` when given: the few-row kernel for few rows (few_rows), else cuBLAS.
    gated: x is [a | b] and the input silu(a) * b; norm (an RMSNorm module): the input is norm(x);
    accumulate: out += the product."""
    norm = None if norm is None else (norm.weight, norm.eps)
    if few_rows(x):
        return skinny_linear(x, weight, bias, gated=gated, norm=norm, out=out, accumulate=accumulate)
    if gated:
        x = silu_and_mul(x)
    if norm is not None:
        x = rms_norm(x, *norm)
    if accumulate:
        return out.add_(F.linear(x, weight, bias))  # rounded product, then the add: as the kernel does
    if out is None:
        return F.linear(x, weight, bias)
    if bias is None:
        return torch.mm(x, weight.t(), out=out)
    return torch.addmm(bias, x, weight.t(), out=out)


def _param(shape, loader) -> nn.Parameter:
    p = nn.Parameter(torch.empty(shape), requires_grad=False)
    p.weight_loader = loader
    return p


class LinearBase(nn.Module):
    """y = x @ W^T (+ b) with W [out_local, in_local]; `tp_dim` is the dimension of W that is split (None:
    replicated). The bias [out_local] is split with the output rows, or whole on every rank (row-parallel)."""

    def __init__(self, in_features: int, out_features: int, tp_dim: int | None, bias: bool = False):
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank_and_size()
        self.tp_dim = tp_dim
        if tp_dim == 0:
            out_features = _divide(out_features, self.tp_size, "output size")
        elif tp_dim == 1:
            in_features = _divide(in_features, self.tp_size, "input size")
        self.weight = _param((out_features, in_features), self.weight_loader)
        self.bias = _param((out_features,), self.weight_loader if tp_dim == 0 else default_weight_loader) \
            if bias else None

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        dim = self.tp_dim if param.dim() == 2 else 0  # a bias reaches here only when split with the rows
        if self.tp_dim is not None and self.tp_size > 1:
            size = param.shape[dim]
            loaded = loaded.narrow(dim, self.tp_rank * size, size)
        default_weight_loader(param, loaded)

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None, norm=None) -> torch.Tensor:
        """y = x W^T + b, into `out` [T, out_local] when given (a static buffer a CUDA graph writes);
        x = norm(x) first when an RMSNorm module is given."""
        return matmul(x, self.weight, self.bias, out, norm=norm)


class ColumnParallelLinear(LinearBase):
    """Output features split across ranks; each rank returns its slice of y."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__(in_features, out_features, tp_dim=0, bias=bias)


class RowParallelLinear(LinearBase):
    """Input features split across ranks; partial products are summed over ranks."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__(in_features, out_features, tp_dim=1, bias=bias)

    def forward(self, x: torch.Tensor, gated: bool = False, add_to: torch.Tensor | None = None) -> torch.Tensor:
        """y = x W^T + b (x = silu(a) * b of [a | b] when gated); with add_to, add_to += y in place (returned)."""
        if self.tp_size == 1:
            return matmul(x, self.weight, self.bias, add_to, gated=gated, accumulate=add_to is not None)
        y = matmul(x, self.weight, gated=gated)
        dist.all_reduce(y)
        y = y if self.bias is None else y + self.bias  # the bias once, after the sum over ranks
        return y if add_to is None else add_to.add_(y)


def _load_packed(load_part, param: nn.Parameter, loaded: torch.Tensor, sizes: dict) -> None:
    """A checkpoint tensor of all the parts in order, `sizes` {shard id: rows}: each part through load_part."""
    if loaded.shape[0] != sum(sizes.values()):
        raise ValueError(f"shape mismatch: checkpoint {tuple(loaded.shape)}, expected {sum(sizes.values())} rows "
                         f"(parts {sizes})")
    for shard_id, part in zip(sizes, loaded.split(list(sizes.values()))):
        load_part(param, part, shard_id)


class PackedColumnLinear(ColumnParallelLinear):
    """Several column-parallel projections in one matmul (q/k/v, gate/up). `parts` maps each checkpoint
    shard id to its full output size; each rank holds its slice of every part, parts laid out in order."""

    def __init__(self, in_features: int, parts: dict, bias: bool = False):
        self.part_sizes = dict(parts)
        super().__init__(in_features, sum(parts.values()), bias=bias)
        self.local_sizes = {k: _divide(v, self.tp_size, f"part {k!r}") for k, v in parts.items()}

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        if shard_id is None:  # the checkpoint holds the parts packed already (Phi-3's gate_up_proj)
            return _load_packed(self.weight_loader, param, loaded, self.part_sizes)
        if shard_id not in self.part_sizes:
            raise ValueError(f"unknown packed shard {shard_id!r}; expected one of {list(self.part_sizes)}")
        if loaded.shape[0] != self.part_sizes[shard_id]:
            raise ValueError(
                f"shape mismatch for shard {shard_id!r}: checkpoint {tuple(loaded.shape)}, "
                f"expected {self.part_sizes[shard_id]} rows"
            )
        offset = 0
        for k, size in self.local_sizes.items():
            if k == shard_id:
                break
            offset += size
        size = self.local_sizes[shard_id]
        loaded = loaded.narrow(0, self.tp_rank * size, size)
        default_weight_loader(param.data.narrow(0, offset, size), loaded)


def local_kv_heads(num_kv_heads: int, tp_size: int) -> tuple[int, int]:
    """(KV heads each rank holds, tp_size ranks per KV head): split when tp_size divides the KV heads,
    one head replicated on tp_size / num_kv_heads ranks when num_kv_heads divides tp_size."""
    if num_kv_heads % tp_size == 0:
        return num_kv_heads // tp_size, 1
    if tp_size % num_kv_heads == 0:
        return 1, tp_size // num_kv_heads
    raise ValueError(f"tensor parallel size {tp_size} and num_key_value_heads={num_kv_heads}: one must divide "
                     f"the other")


class QKVParallelLinear(LinearBase):
    """q, k, v projections in one matmul, split by heads: each rank holds num_heads / N query heads [q | k | v]
    and its KV heads (see local_kv_heads), so a rank's queries always find their KV heads locally."""

    def __init__(self, hidden: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = False):
        rank, tp = tp_rank_and_size()
        self.head_dim, self.full_heads = head_dim, {"q": num_heads, "k": num_kv_heads, "v": num_kv_heads}
        q_local = _divide(num_heads, tp, "num_attention_heads")
        kv_local, share = local_kv_heads(num_kv_heads, tp)
        kv_start = rank // share * kv_local
        # shard id -> (first checkpoint head, heads, first local head)
        self.layout = {"q": (rank * q_local, q_local, 0), "k": (kv_start, kv_local, q_local),
                       "v": (kv_start, kv_local, q_local + kv_local)}
        super().__init__(hidden, (q_local + 2 * kv_local) * head_dim, tp_dim=None, bias=bias)
        self.weight.weight_loader = self.weight_loader
        if self.bias is not None:
            self.bias.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        if shard_id is None:  # the checkpoint holds q, k and v packed already (Phi-3's qkv_proj)
            sizes = {k: n * self.head_dim for k, n in self.full_heads.items()}
            return _load_packed(self.weight_loader, param, loaded, sizes)
        if shard_id not in self.layout:
            raise ValueError(f"unknown packed shard {shard_id!r}; expected one of {list(self.layout)}")
        d = self.head_dim
        if loaded.shape[0] != self.full_heads[shard_id] * d:
            raise ValueError(f"shape mismatch for shard {shard_id!r}: checkpoint {tuple(loaded.shape)}, "
                             f"expected {self.full_heads[shard_id] * d} rows")
        first, n, local = self.layout[shard_id]
        default_weight_loader(param.data.narrow(0, local * d, n * d), loaded.narrow(0, first * d, n * d))


class VocabParallelEmbedding(nn.Module):
    """Embedding rows split by vocabulary range across ranks; lookups outside a rank's range give zeros that
    the all-reduce fills in."""

    def __init__(self, vocab_size: int, hidden: int):
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank_and_size()
        self.vocab_size = vocab_size
        self.shard = -(-vocab_size // self.tp_size)  # ceil: the last shard is padded
        self.start = self.tp_rank * self.shard
        self.weight = nn.Parameter(torch.empty(self.shard, hidden), requires_grad=False)
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        if loaded.shape[0] != self.vocab_size or loaded.shape[1] != param.shape[1]:
            raise ValueError(
                f"shape mismatch: checkpoint {tuple(loaded.shape)} vs ({self.vocab_size}, {param.shape[1]})")
        part = loaded[self.start:self.start + self.shard]
        param.data.zero_()
        param.data[: part.shape[0]].copy_(part)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.embedding(ids, self.weight)
        local = ids - self.start
        mask = (local >= 0) & (local < self.shard)
        y = F.embedding(local.clamp(0, self.shard - 1), self.weight) * mask.unsqueeze(-1).to(self.weight.dtype)
        dist.all_reduce(y)
        return y


class ParallelLMHead(VocabParallelEmbedding):
    """logits = h @ E^T over this rank's vocabulary slice, gathered to the full vocabulary on every rank (each
    rank samples the same ids from them, so none has to be told them)."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = F.linear(hidden, self.weight)
        if self.tp_size > 1:
            parts = [torch.empty_like(logits) for _ in range(self.tp_size)]
            dist.all_gather(parts, logits.contiguous())
            logits = torch.cat(parts, dim=-1)
        return logits[..., : self.vocab_size]
