"""Runs the model for one scheduled batch and samples the next tokens.

- Loads the checkpoint, sizes the KV cache from the memory left after a warm-up forward at the largest step
  (GPU) or from a fixed token budget (CPU), and binds the cache to every attention layer.
- Prefill steps run eagerly (varlen, any length). Decode steps replay a CUDA graph captured at the next
  bucketed batch size (1, 2, 4, 8, 16, 32, 48, ... up to max_running) over static input buffers; padded rows
  have context length 0 and slot -1, so they read and write no KV. Every kernel is tuned by an eager run at
  the bucket's shapes before capture, so nothing tunes inside a graph. `enforce_eager` (and the CPU) skip graphs.
- Sampling runs the sampling kernel on the logits of the rows that sample.
"""
from __future__ import annotations

import torch

from tritium.engine.config import EngineConfig
from tritium.engine.scheduler import ScheduledBatch
from tritium.kernels.sampling import sample
from tritium.model.attention import AttentionMetadata, allocate_kv_cache, kv_cache_bytes_per_block
from tritium.model.loader import config_dtype, load_model

CPU_CACHE_TOKENS = 1 << 16  # KV tokens allocated on the CPU when num_kvcache_blocks is auto


def graph_buckets(max_bs: int) -> list[int]:
    small = [1, 2, 4, 8, 16]
    return sorted({b for b in small if b < max_bs} | set(range(32, max_bs, 16)) | {max_bs})


class ModelRunner:
    def __init__(self, config: EngineConfig, hf_config, device: torch.device):
        self.config, self.hf_config, self.device = config, hf_config, device
        self.dtype = config_dtype(hf_config, config.dtype)
        self.block_size = config.kvcache_block_size
        self.max_bs = min(config.max_num_seqs, config.max_num_batched_tokens)
        self.max_blocks_per_seq = -(-config.max_model_len // self.block_size)
        self.model = load_model(config.model, device=device, dtype=self.dtype)
        self.num_blocks = config.num_kvcache_blocks if config.num_kvcache_blocks > 0 else self._auto_num_blocks()
        self.kv_cache = allocate_kv_cache(self.model, self.num_blocks, self.block_size, self.dtype, device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        if device.type == "cuda" and not config.enforce_eager:
            self._capture_decode_graphs()

    # ---- KV cache sizing ---------------------------------------------------------------------------------
    def _auto_num_blocks(self) -> int:
        per_block = kv_cache_bytes_per_block(self.model, self.block_size, self.dtype)
        if self.device.type != "cuda":
            return max(self.max_blocks_per_seq, CPU_CACHE_TOKENS // self.block_size)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        self._warmup_forward()
        free, total = torch.cuda.mem_get_info()
        stats = torch.cuda.memory_stats()
        peak, current = stats["allocated_bytes.all.peak"], stats["allocated_bytes.all.current"]
        # What the process will hold at most outside the cache: now + the warm-up's transient peak.
        budget = total * self.config.gpu_memory_utilization - (total - free) - (peak - current)
        num_blocks = int(budget // per_block)
        if num_blocks < self.max_blocks_per_seq:
            raise ValueError(
                f"not enough GPU memory for the KV cache: {max(num_blocks, 0)} blocks of {self.block_size} tokens "
                f"fit, one sequence of max_model_len={self.config.max_model_len} needs {self.max_blocks_per_seq}; "
                f"raise gpu_memory_utilization or lower max_model_len")
        return num_blocks

    def _warmup_forward(self) -> None:
        """The largest prefill step (max_num_batched_tokens over as few sequences as fit) with a throwaway
        cache, plus logits and sampling for max_bs rows: measures the activation peak."""
        cfg = self.config
        tokens = min(cfg.max_num_batched_tokens, self.max_bs * cfg.max_model_len)
        lens = [cfg.max_model_len] * (tokens // cfg.max_model_len)
        if tokens % cfg.max_model_len:
            lens.append(tokens % cfg.max_model_len)
        blocks = [-(-n // self.block_size) for n in lens]
        allocate_kv_cache(self.model, sum(blocks), self.block_size, self.dtype, self.device)
        tables, nxt = [], 0
        for b in blocks:
            tables.append(list(range(nxt, nxt + b)))
            nxt += b
        ids = [i % self.hf_config.vocab_size for i in range(tokens)]
        positions = [p for n in lens for p in range(n)]
        slots = [t[p // self.block_size] * self.block_size + p % self.block_size for t, n in zip(tables, lens)
                 for p in range(n)]
        meta, ids_t, pos_t = self._prefill_tensors(ids, positions, slots, lens, lens, tables)
        hidden = self.model(ids_t, pos_t, meta)
        rows = torch.arange(self.max_bs, device=self.device) % hidden.shape[0]
        self._sample(self.model.compute_logits(hidden[rows]), [0.0] * self.max_bs, [0] * self.max_bs,
                     [0] * self.max_bs, None)
        del hidden
        torch.cuda.synchronize()

    # ---- inputs ------------------------------------------------------------------------------------------
    def _tensor(self, values, dtype=torch.int32) -> torch.Tensor:
        t = torch.tensor(values, dtype=dtype, pin_memory=self.device.type == "cuda")
        return t.to(self.device, non_blocking=True)

    def _block_table_tensor(self, tables: list[list[int]]) -> torch.Tensor:
        width = max(len(t) for t in tables)
        return self._tensor([t + [0] * (width - len(t)) for t in tables])

    def _prefill_tensors(self, ids, positions, slots, query_lens, context_lens, tables):
        cu = [0]
        for n in query_lens:
            cu.append(cu[-1] + n)
        meta = AttentionMetadata(
            is_prefill=True, slot_mapping=self._tensor(slots, torch.int64), seq_lens=self._tensor(context_lens),
            block_tables=self._block_table_tensor(tables), cu_seqlens_q=self._tensor(cu),
            max_seqlen_q=max(query_lens))
        return meta, self._tensor(ids, torch.int64), self._tensor(positions, torch.int64)

    # ---- one step ----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> list[int]:
        """Compute the batch; returns one sampled token per sampling sequence, in batch order."""
        x = batch.inputs()
        if batch.is_prefill:
            meta, ids, pos = self._prefill_tensors(x.input_ids, x.positions, x.slot_mapping, x.query_lens,
                                                   x.context_lens, x.block_tables)
            hidden = self.model(ids, pos, meta)
            hidden = hidden[self._tensor(x.sample_rows, torch.int64)] if x.sample_rows else hidden[:0]
        else:
            hidden = self._decode(x)
        if not x.sample_rows:
            return []
        logits = self.model.compute_logits(hidden)
        params = [batch.seqs[i].sampling_params for i in x.sample_seq_indices]
        return self._sample(logits, [p.temperature for p in params], x.seeds, x.sample_offsets, params).tolist()

    def _decode(self, x, eager: bool = False) -> torch.Tensor:
        """Decode hidden states [bs, hidden]. With graphs captured, the batch is padded to its bucket in the static
        buffers and the bucket's graph replays (eager=True runs the same padded batch without the graph)."""
        bs = len(x.input_ids)
        bucket = next((b for b in self.graphs if b >= bs), None)
        if bucket is None:
            meta = AttentionMetadata(
                is_prefill=False, slot_mapping=self._tensor(x.slot_mapping, torch.int64),
                seq_lens=self._tensor(x.context_lens), block_tables=self._block_table_tensor(x.block_tables))
            return self.model(self._tensor(x.input_ids, torch.int64), self._tensor(x.positions, torch.int64), meta)
        s = self.static
        s["ids"][:bs].copy_(self._tensor(x.input_ids, torch.int64))
        s["pos"][:bs].copy_(self._tensor(x.positions, torch.int64))
        s["slots"].fill_(-1)
        s["slots"][:bs].copy_(self._tensor(x.slot_mapping, torch.int64))
        s["seq_lens"].zero_()
        s["seq_lens"][:bs].copy_(self._tensor(x.context_lens))
        table = self._block_table_tensor(x.block_tables)
        s["tables"][:bs, : table.shape[1]].copy_(table)
        if eager:
            s["hidden"][:bucket] = self.model(s["ids"][:bucket], s["pos"][:bucket], self._static_meta(bucket))
        else:
            self.graphs[bucket].replay()
        return s["hidden"][:bs]

    def _static_meta(self, bs: int) -> AttentionMetadata:
        s = self.static
        return AttentionMetadata(is_prefill=False, slot_mapping=s["slots"][:bs], seq_lens=s["seq_lens"][:bs],
                                 block_tables=s["tables"][:bs])

    def _sample(self, logits, temperatures, seeds, offsets, params) -> torch.Tensor:
        kw = {}
        if params is not None:
            if any(p.top_k > 0 for p in params):
                kw["top_k"] = self._tensor([max(p.top_k, 0) for p in params])
            if any(p.top_p < 1.0 for p in params):
                kw["top_p"] = self._tensor([p.top_p for p in params], torch.float32)
            if any(p.min_p > 0.0 for p in params):
                kw["min_p"] = self._tensor([p.min_p for p in params], torch.float32)
        return sample(logits, self._tensor(temperatures, torch.float32), self._tensor(seeds, torch.int64),
                      self._tensor(offsets, torch.int64), **kw)

    # ---- CUDA graphs -------------------------------------------------------------------------------------
    def _capture_decode_graphs(self) -> None:
        n, dev = self.max_bs, self.device
        s = self.static = {
            "ids": torch.zeros(n, dtype=torch.int64, device=dev),
            "pos": torch.zeros(n, dtype=torch.int64, device=dev),
            "slots": torch.full((n,), -1, dtype=torch.int64, device=dev),
            "seq_lens": torch.zeros(n, dtype=torch.int32, device=dev),
            "tables": torch.zeros(n, self.max_blocks_per_seq, dtype=torch.int32, device=dev),
            "hidden": torch.empty(n, self.hf_config.hidden_size, dtype=self.dtype, device=dev),
        }
        # Valid block ids for every row, used only while tuning (see below).
        full_tables = torch.arange(s["tables"].numel(), device=dev).view_as(s["tables"]) % self.num_blocks
        pool = None
        for bs in reversed(graph_buckets(n)):
            meta = self._static_meta(bs)
            with torch.inference_mode():
                # Tune every kernel at these shapes first, on full-length contexts: tuning on the empty padded
                # rows would pick the config that is fastest at doing nothing. Slots -1: nothing is written.
                s["seq_lens"].fill_(self.config.max_model_len)
                s["tables"].copy_(full_tables)
                self.model(s["ids"][:bs], s["pos"][:bs], meta)
                torch.cuda.synchronize()
                s["seq_lens"].zero_()
                s["tables"].zero_()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    s["hidden"][:bs] = self.model(s["ids"][:bs], s["pos"][:bs], meta)
            pool = graph.pool() if pool is None else pool
            self.graphs[bs] = graph
        self.graphs = dict(sorted(self.graphs.items()))

    def close(self) -> None:
        """Drop the graphs and the KV cache so their memory can be reused."""
        from tritium.model.attention import release_kv_cache

        self.graphs.clear()
        self.static = {}
        release_kv_cache(self.model)
        self.kv_cache = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
