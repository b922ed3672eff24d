"""Runs the model for one scheduled batch and samples the next tokens.

- Loads the checkpoint, sizes the KV cache from the memory left after a warm-up forward at the largest step
  (GPU) or from a fixed token budget (CPU), and binds the cache to every attention layer.
- `launch(batch)` enqueues one step and returns its sampled ids as SampledTokens (copied to the host without
  blocking; `.tolist()` waits), so the engine can schedule the next step while this one runs. Inputs whose id
  is a placeholder (sampled by the previous step, see scheduler.py) are taken from that step's ids on the
  device.
- Steps with prefill chunks (possibly after decode rows: a mixed step) replay the forward's pieces from CUDA
  graphs at the next token bucket, attention eager between them (piecewise.py), up to piecewise_graph_tokens;
  larger ones run eagerly. Pure decode steps replay a
  CUDA graph captured at the next bucketed batch size (1, 2, 4, 8, 16, 32, 48, ... up to max_running) over
  static input buffers: the model, the LM head and sampling, one graph for plain sampling and one with the
  top-k / top-p / min-p filters. Padded rows have context length 0 and slot -1, so they read and write no KV,
  and sample greedily. Every
  kernel is tuned by an eager run at the bucket's shapes before capture, so nothing tunes inside a graph.
  `enforce_eager` (and the CPU) skip graphs. On the GPU block tables are always max_model_len wide, so eager
  decode rows meet the kernel keys the graphs were tuned at.
- Eager steps sample with the same kernel on the logits of the rows that sample.
"""
from __future__ import annotations

import torch

from tritium import distributed
from tritium.engine.config import EngineConfig
from tritium.engine.batch import ScheduledBatch, StepPlan
from tritium.engine.piecewise import PiecewiseGraphs
from tritium.kernels.sampling import sample
from tritium.model.attention import (AttentionMetadata, allocate_kv_cache, kv_cache_bytes_per_block,
                                     release_kv_cache)
from tritium.model.loader import config_dtype, load_model

CPU_CACHE_TOKENS = 1 << 16  # KV tokens allocated on the CPU when num_kvcache_blocks is auto


def graph_buckets(max_bs: int) -> list[int]:
    small = [1, 2, 4, 8, 16]
    return sorted({b for b in small if b < max_bs} | set(range(32, max_bs, 16)) | {max_bs})


class SampledTokens:
    """A step's sampled ids [S], copied to the host without blocking; tolist() waits for them."""

    def __init__(self, ids: torch.Tensor):
        self._event = None
        if ids.is_cuda:
            self._host = torch.empty(ids.shape, dtype=ids.dtype, pin_memory=True)
            self._host.copy_(ids, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = ids

    def tolist(self) -> list[int]:
        if self._event is not None:
            self._event.synchronize()
        return self._host.tolist()


class ModelRunner:
    def __init__(self, config: EngineConfig, hf_config, device: torch.device):
        self.config, self.hf_config, self.device = config, hf_config, device
        self.dtype = config_dtype(hf_config, config.dtype)
        self.block_size = config.kvcache_block_size
        self.max_bs = min(config.max_num_seqs, config.max_num_batched_tokens)
        self.max_blocks_per_seq = -(-config.max_model_len // self.block_size)
        self.model = load_model(config.model, device=device, dtype=self.dtype)
        self.num_blocks = config.num_kvcache_blocks if config.num_kvcache_blocks > 0 else self._auto_num_blocks()
        if distributed.is_parallel():  # every rank's cache holds the same blocks: the smallest fits all
            self.num_blocks = distributed.min_over_ranks(self.num_blocks)
        self.kv_cache = allocate_kv_cache(self.model, self.num_blocks, self.block_size, self.dtype, device)
        self.graphs: dict[int, dict[bool, torch.cuda.CUDAGraph]] = {}  # bucket -> filtered? -> graph
        self._last_sampled = torch.empty(0, dtype=torch.int64, device=device)  # the last step's ids
        self.piecewise: PiecewiseGraphs | None = None
        if device.type == "cuda" and not config.enforce_eager:
            self._capture_decode_graphs()
            if self._piecewise_tokens():
                self.piecewise = PiecewiseGraphs(self.model.model, self._piecewise_tokens(), device)

    def _piecewise_tokens(self) -> int:
        return min(self.config.max_num_batched_tokens, self.config.piecewise_graph_tokens)

    # ---- KV cache sizing ---------------------------------------------------------------------------------
    def _auto_num_blocks(self) -> int:
        per_block = kv_cache_bytes_per_block(self.model, self.block_size, self.dtype)
        if self.device.type != "cuda":
            return max(self.max_blocks_per_seq, CPU_CACHE_TOKENS // self.block_size)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        tokens, cache_bytes = self._warmup_forward()  # its throwaway cache is released again
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info()
        stats = torch.cuda.memory_stats()
        peak, current = stats["allocated_bytes.all.peak"], stats["allocated_bytes.all.current"]
        activations = max(0, peak - cache_bytes - current)  # the largest step's transient tensors
        # The decode and piecewise graphs keep their own pools: activations of max_bs rows and of the largest
        # piecewise bucket, budgeted at the same rate per row, and the decode logits (with the sampling scratch).
        logits = self.max_bs * self.hf_config.vocab_size * (self.dtype.itemsize + 4)
        graph_rows = self.max_bs + self._piecewise_tokens()
        graphs = 0 if self.config.enforce_eager else activations * graph_rows // max(tokens, 1) + logits
        budget = total * self.config.gpu_memory_utilization - (total - free) - activations - graphs
        num_blocks = int(budget // per_block)
        if num_blocks < self.max_blocks_per_seq:
            raise ValueError(
                f"not enough GPU memory for the KV cache: {max(num_blocks, 0)} blocks of {self.block_size} tokens "
                f"fit, one sequence of max_model_len={self.config.max_model_len} needs {self.max_blocks_per_seq}; "
                f"raise gpu_memory_utilization or lower max_model_len")
        return num_blocks

    def _warmup_forward(self) -> tuple[int, int]:
        """The largest prefill step (max_num_batched_tokens over as few sequences as fit) with a throwaway
        cache, plus logits and sampling for max_bs rows: measures the activation peak. Returns (tokens,
        bytes of the throwaway cache)."""
        cfg = self.config
        tokens = min(cfg.max_num_batched_tokens, self.max_bs * cfg.max_model_len)
        lens = [cfg.max_model_len] * (tokens // cfg.max_model_len)
        if tokens % cfg.max_model_len:
            lens.append(tokens % cfg.max_model_len)
        blocks = [-(-n // self.block_size) for n in lens]
        cache_bytes = allocate_kv_cache(self.model, sum(blocks), self.block_size, self.dtype, self.device).nbytes
        tables, nxt = [], 0
        for b in blocks:
            tables.append(list(range(nxt, nxt + b)))
            nxt += b
        ids = [i % self.hf_config.vocab_size for i in range(tokens)]
        positions = [p for n in lens for p in range(n)]
        slots = [t[p // self.block_size] * self.block_size + p % self.block_size for t, n in zip(tables, lens)
                 for p in range(n)]
        meta, ids_t, pos_t = self._device_inputs(ids, positions, slots, lens, lens, tables, 0)
        hidden = self.model(ids_t, pos_t, meta)
        rows = torch.arange(self.max_bs, device=self.device) % hidden.shape[0]
        zeros = torch.zeros(self.max_bs, dtype=torch.int64, device=self.device)
        sample(self.model.compute_logits(hidden[rows]), zeros.float(), zeros, zeros)
        del hidden, meta
        torch.cuda.synchronize()
        release_kv_cache(self.model)  # before free memory is measured
        return tokens, cache_bytes

    # ---- inputs ------------------------------------------------------------------------------------------
    def _tensor(self, values, dtype=torch.int32) -> torch.Tensor:
        t = torch.tensor(values, dtype=dtype, pin_memory=self.device.type == "cuda")
        return t.to(self.device, non_blocking=True)

    def _block_table_tensor(self, tables: list[list[int]]) -> torch.Tensor:
        width = self.max_blocks_per_seq if self.device.type == "cuda" else max(len(t) for t in tables)
        return self._tensor([t + [0] * (width - len(t)) for t in tables])

    def _device_inputs(self, ids, positions, slots, query_lens, context_lens, tables, num_decodes: int):
        """(metadata, ids, positions) on the device; one copy for the token rows, one for the sequences."""
        tok = self._tensor([ids, positions, slots], torch.int64)  # [3, T]
        prefill_lens = query_lens[num_decodes:]
        cu = [0]
        for n in prefill_lens:
            cu.append(cu[-1] + n)
        per_seq = self._tensor(context_lens + cu)  # [B + prefill seqs + 1]
        B = len(context_lens)
        meta = AttentionMetadata(
            slot_mapping=tok[2], seq_lens=per_seq[:B], block_tables=self._block_table_tensor(tables),
            num_decodes=num_decodes, cu_seqlens_q=per_seq[B:] if prefill_lens else None,
            max_seqlen_q=max(prefill_lens, default=1))
        return meta, tok[0], tok[1]

    def _take_pending(self, ids: torch.Tensor, x) -> None:
        """Fill the rows of `ids` whose token is the previous step's sampled id (on the device)."""
        if x.pending_rows:
            ids[self._tensor(x.pending_rows, torch.int64)] = self._last_sampled[self._tensor(x.pending_src,
                                                                                              torch.int64)]

    # ---- one step ----------------------------------------------------------------------------------------
    def launch(self, batch: ScheduledBatch) -> SampledTokens:
        """Enqueue the batch; returns one sampled id per sampling sequence, in batch order, when ready."""
        return self.execute(batch.plan())

    @torch.inference_mode()
    def execute(self, plan: StepPlan) -> SampledTokens:
        x, params = plan.inputs, plan.params
        if not plan.is_prefill and next((b for b in self.graphs if b >= len(x.input_ids)), None):
            self._last_sampled = self._decode_graph(x, params)
            return SampledTokens(self._last_sampled)
        meta, ids, pos = self._device_inputs(x.input_ids, x.positions, x.slot_mapping, x.query_lens,
                                             x.context_lens, x.block_tables, plan.num_decodes)
        self._take_pending(ids, x)
        if self.piecewise is not None and self.piecewise.bucket(len(ids)) is not None:
            hidden = self.piecewise.forward(ids, pos, meta)
        else:
            hidden = self.model(ids, pos, meta)
        if plan.is_prefill:
            hidden = hidden[self._tensor(x.sample_rows, torch.int64)] if x.sample_rows else hidden[:0]
        if not x.sample_rows:
            return SampledTokens(torch.empty(0, dtype=torch.int64))
        logits = self.model.compute_logits(hidden)  # every rank gets all of them and samples the same ids
        temps, seeds, offsets, filters = self._sampling_inputs(params, x.seeds, x.sample_offsets)
        self._last_sampled = sample(logits, temps, seeds, offsets, **filters)
        return SampledTokens(self._last_sampled)

    def _sampling_inputs(self, params, seeds, offsets, pad: int = 0):
        """(temperature, seeds, offsets, filters) on the device for `sample`, each padded with `pad` greedy
        rows. filters: {} or all three (rows without one pass its no-op value): the kernels compile one variant
        per filter combination, and start-up warms up two paths, not eight."""
        f = torch.float32
        sp = self._tensor([[float(p.temperature) for p in params] + [0.0] * pad], f)[0]
        so = self._tensor([list(seeds) + [0] * pad, list(offsets) + [0] * pad], torch.int64)
        filters = {}
        if any(p.top_k > 0 or p.top_p < 1.0 or p.min_p > 0.0 for p in params):
            filters = dict(top_k=self._tensor([max(p.top_k, 0) for p in params] + [0] * pad),
                           top_p=self._tensor([p.top_p for p in params] + [1.0] * pad, f),
                           min_p=self._tensor([p.min_p for p in params] + [0.0] * pad, f))
        return sp, so[0], so[1], filters

    def _decode_graph(self, x, params, eager: bool = False) -> torch.Tensor:
        """A decode step's sampled ids [bs]: the batch padded to its bucket in the static buffers, and the
        bucket's graph (model, LM head, sampling) replayed; eager=True runs the same padded batch without the
        graph. The hidden states stay in static["hidden"]."""
        bs = len(x.input_ids)
        bucket = next(b for b in self.graphs if b >= bs)
        meta, ids, pos = self._device_inputs(x.input_ids, x.positions, x.slot_mapping, x.query_lens,
                                             x.context_lens, x.block_tables, bs)
        self._take_pending(ids, x)
        s = self.static
        s["ids"][:bs].copy_(ids)
        s["pos"][:bs].copy_(pos)
        s["slots"].fill_(-1)
        s["slots"][:bs].copy_(meta.slot_mapping)
        s["seq_lens"].zero_()
        s["seq_lens"][:bs].copy_(meta.seq_lens)
        s["tables"][:bs].copy_(meta.block_tables)
        temps, seeds, offsets, filters = self._sampling_inputs(params, x.seeds, x.sample_offsets, bucket - bs)
        for name, t in (("temps", temps), ("seeds", seeds), ("offsets", offsets), *filters.items()):
            s[name][:bucket].copy_(t)
        if eager:
            self._decode_forward(bucket, bool(filters))
        else:
            self.graphs[bucket][bool(filters)].replay()
        return s["sampled"][:bs]

    def _decode_forward(self, bs: int, filtered: bool) -> None:
        """What a decode graph holds: the model over the static inputs of bs rows, the LM head and sampling
        (plain, or with top-k / top-p / min-p) into static["sampled"]."""
        s = self.static
        s["hidden"][:bs] = self.model(s["ids"][:bs], s["pos"][:bs], self._static_meta(bs))
        logits = self.model.compute_logits(s["hidden"][:bs])
        filters = {k: s[k][:bs] for k in ("top_k", "top_p", "min_p")} if filtered else {}
        sample(logits, s["temps"][:bs], s["seeds"][:bs], s["offsets"][:bs], out=s["sampled"][:bs], **filters)

    def _static_meta(self, bs: int) -> AttentionMetadata:
        s = self.static
        return AttentionMetadata(slot_mapping=s["slots"][:bs], seq_lens=s["seq_lens"][:bs],
                                 block_tables=s["tables"][:bs], num_decodes=bs)

    # ---- CUDA graphs -------------------------------------------------------------------------------------
    def _capture_decode_graphs(self) -> None:
        n, dev, i64 = self.max_bs, self.device, torch.int64
        s = self.static = {
            "ids": torch.zeros(n, dtype=i64, device=dev),
            "pos": torch.zeros(n, dtype=i64, device=dev),
            "slots": torch.full((n,), -1, dtype=i64, device=dev),
            "seq_lens": torch.zeros(n, dtype=torch.int32, device=dev),
            "tables": torch.zeros(n, self.max_blocks_per_seq, dtype=torch.int32, device=dev),
            "hidden": torch.empty(n, self.hf_config.hidden_size, dtype=self.dtype, device=dev),
            # sampling: the parameters of each row (padded rows are greedy) and the sampled ids
            "temps": torch.zeros(n, dtype=torch.float32, device=dev),
            "seeds": torch.zeros(n, dtype=i64, device=dev),
            "offsets": torch.zeros(n, dtype=i64, device=dev),
            "top_k": torch.zeros(n, dtype=torch.int32, device=dev),
            "top_p": torch.ones(n, dtype=torch.float32, device=dev),
            "min_p": torch.zeros(n, dtype=torch.float32, device=dev),
            "sampled": torch.zeros(n, dtype=i64, device=dev),
        }
        # Valid block ids for every row, used only while tuning (see below).
        full_tables = torch.arange(s["tables"].numel(), device=dev).view_as(s["tables"]) % self.num_blocks
        pool = None
        for bs in reversed(graph_buckets(n)):
            self.graphs[bs] = {}
            for filtered in (False, True):  # one graph per sampling path
                with torch.inference_mode():
                    # Tune every kernel at these shapes first, on full-length contexts: tuning on the empty
                    # padded rows would pick the config that is fastest at doing nothing. Slots -1: nothing
                    # is written.
                    s["seq_lens"].fill_(self.config.max_model_len)
                    s["tables"].copy_(full_tables)
                    self._decode_forward(bs, filtered)
                    torch.cuda.synchronize()
                    s["seq_lens"].zero_()
                    s["tables"].zero_()
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool):
                        self._decode_forward(bs, filtered)
                pool = graph.pool() if pool is None else pool
                self.graphs[bs][filtered] = graph
        self.graphs = dict(sorted(self.graphs.items()))

    def close(self) -> None:
        """Drop the graphs and the KV cache so their memory can be reused."""
        self.graphs.clear()
        self.static, self.piecewise = {}, None
        release_kv_cache(self.model)
        self.kv_cache = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
