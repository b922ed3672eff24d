"""CUDA graphs for prefill and mixed steps, one per piece of the forward, with attention eager between them.

An eager prefill step launches ~300 kernels whose host cost (~20 ms on an H100 for Qwen3-0.6B) is the same
at 16 tokens as at 4096. Attention is the only part whose launch depends on more than the token count (its
grid and metadata follow the sequences), so the forward is split at the attention calls
(`DecoderModel.piece`, `attend`): for each token bucket the L + 1 pieces are captured, and a step copies its
ids / positions / slots into static buffers padded to the bucket, replays piece i, runs attention i eagerly
on the real rows, and so on.

Padding rows get slot -1 (no KV write) and keep whatever ids / positions / o rows earlier steps left there
(valid values: zeros or an earlier step's); their q rows are never attended, so they change nothing but
themselves (every other op is row-wise or a GEMM).

Memory: all buckets' graphs share one pool, captured largest bucket first. Within a bucket only what crosses
a piece boundary stays alive: the residual and the final hidden (kept referenced per bucket), q (a view of the
static qkv buffer the projection writes into), the attention output in the static o buffer. Intermediates of a
piece are dead when it ends, so later captures reuse them; replays run in stream order, one bucket at a time.
"""
from __future__ import annotations

import torch

from tritium.model.attention import AttentionMetadata

SMALLEST_BUCKET = 16
POW2_UP_TO = 512  # buckets above this are 1x and 1.5x powers of two: at most 1.5x padding


def token_buckets(max_tokens: int) -> list[int]:
    """Token counts graphs are captured at, ascending, the last one max_tokens: 16, 32, ... 512, then
    768, 1024, 1536, 2048, ... (a step is padded to the first bucket at least its size)."""
    buckets, b = [], SMALLEST_BUCKET
    while b < max_tokens:
        buckets.append(b)
        if b < POW2_UP_TO:
            b *= 2
        else:  # a power of two -> 1.5x it -> the next power of two
            b = b * 3 // 2 if b & (b - 1) == 0 else b * 4 // 3
    return buckets + [max_tokens]


class PiecewiseGraphs:
    """The pieces of `model` (a DecoderModel) captured for every token bucket up to max_tokens.
    capture=False keeps the static buffers and padding but runs the pieces eagerly (CPU tests)."""

    def __init__(self, model, max_tokens: int, device: torch.device, capture: bool = True):
        self.model, self.device = model, device
        self.buckets = token_buckets(max_tokens)
        first = model.layers[0].self_attn
        qkv_width = first.qkv_proj.weight.shape[0]
        n, i64 = max_tokens, torch.int64
        self.ids = torch.zeros(n, dtype=i64, device=device)
        self.positions = torch.zeros(n, dtype=i64, device=device)
        self.slots = torch.full((n,), -1, dtype=i64, device=device)
        dtype = first.qkv_proj.weight.dtype
        self.qkv = torch.zeros(n, qkv_width, dtype=dtype, device=device)
        self.o = torch.zeros(n, first.num_heads, first.head_dim, dtype=dtype, device=device)
        self.graphs: dict[int, list[torch.cuda.CUDAGraph]] = {}  # bucket -> its pieces
        self.q: dict[int, torch.Tensor] = {}  # bucket -> q [bucket, Hq, D] the pieces before an attention return
        self.hidden: dict[int, torch.Tensor] = {}  # bucket -> the last piece's output
        self._residuals: dict[int, torch.Tensor] = {}  # bucket -> its residual stream, kept alive across pieces
        if capture:
            with torch.inference_mode():
                self._capture()

    @property
    def num_pieces(self) -> int:
        return len(self.model.layers) + 1

    def bucket(self, num_tokens: int) -> int | None:
        """The bucket a step of num_tokens runs at, or None when it is larger than all of them."""
        return next((b for b in self.buckets if b >= num_tokens), None)

    def _piece(self, i: int, t: int, residual):
        """Piece i at bucket t: (q, residual), or (hidden, None) from the last one."""
        x = self.ids[:t] if i == 0 else self.o[:t]
        return self.model.piece(i, x, residual, self.positions[:t], self.slots[:t], qkv_out=self.qkv[:t])

    def _capture(self) -> None:
        pool = None
        for t in reversed(self.buckets):
            # Tune every kernel at these shapes first, with real slots (a store to -1 slots would be tuned at
            # doing nothing): slot r writes row r of a cache that holds nothing yet.
            self.slots[:t].copy_(torch.arange(t, device=self.device))
            residual = None
            for i in range(self.num_pieces):
                _, residual = self._piece(i, t, residual)
            torch.cuda.synchronize()
            self.slots.fill_(-1)
            self.graphs[t], residual = [], None
            for i in range(self.num_pieces):
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    x, next_residual = self._piece(i, t, residual)
                pool = graph.pool() if pool is None else pool
                self.graphs[t].append(graph)
                if i == 0:
                    self.q[t], self._residuals[t] = x, next_residual
                residual = next_residual
            self.hidden[t] = x

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                eager: bool = False) -> torch.Tensor:
        """hidden [T, hidden] of a step's T tokens (T <= the largest bucket): its inputs padded into the
        static buffers, the bucket's pieces replayed (eager=True, or nothing captured: run eagerly) with
        attention between."""
        n = ids.shape[0]
        t = self.bucket(n)
        self.ids[:n].copy_(ids)
        self.positions[:n].copy_(positions)
        self.slots[:t].fill_(-1)
        self.slots[:n].copy_(meta.slot_mapping)
        graphs, residual, layers = None if eager else self.graphs.get(t), None, len(self.model.layers)
        for i in range(self.num_pieces):
            if graphs:
                graphs[i].replay()
                x = self.q[t] if i < layers else self.hidden[t]
            else:
                x, residual = self._piece(i, t, residual)
            if i < layers:
                self.model.attend(i, x[:n], meta, out=self.o[:n])
        return x[:n]
