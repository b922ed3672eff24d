"""Continuous batching: which sequences run in the next step, and how many tokens each computes.

Loop (driven by the engine)::

    batch = scheduler.schedule()          # None only when nothing is left (is_finished())
    inputs = batch.inputs()               # flat ids/positions/slots for the model runner (see BatchInputs)
    token_ids = runner.run(batch, ...)    # one sampled token per sequence with batch.samples[i] True
    finished = scheduler.postprocess(batch, token_ids)

A step is either a PREFILL step (new or preempted sequences, possibly one chunk of a long prompt) or a
DECODE step (every running sequence whose prefill is done computes its last token and samples one more).

Prefill steps: first the unfinished chunked prefill, if any; then waiting sequences oldest first, while
the per-step token budget ``max_num_batched_tokens`` lasts, fewer than ``max_running`` sequences hold
blocks, and the block manager can allocate the next one (FIFO: admission stops at the first that does not
fit, so nobody overtakes an older request). A prompt longer than the remaining budget gets a chunk of what
is left: it is the one partial prefill of the step and always the last sequence of the batch. A sequence
whose prefill is unfinished does not sample and continues in the next prefill step. All of a sequence's
blocks are allocated when it is admitted, so a started prefill never waits for memory.

Decode steps: running sequences oldest first (at most ``max_running``); a sequence whose last token needs
a new block and finds none preempts the NEWEST running sequence (by recompute: its blocks are freed, it goes
back to the waiting queue in age order and later re-prefills prompt + completion so far, mostly from the
prefix cache), possibly itself. The oldest request is therefore never preempted (``add`` guarantees that
one request alone fits in the cache) and every request finishes.

Policy ("scheduler_policy" in EngineConfig): "alternate" runs a decode step after each prefill step when
there are sequences to decode, so running requests keep producing tokens while long prompts are chunked
through; "prefill_first" (Nano-vLLM) prefills whenever something can be admitted. Mixed prefill+decode
steps are not done: each step is one kind.

``max_running = min(max_num_seqs, max_num_batched_tokens)`` so a decode step never exceeds the token
budget either (the runner can size its buffers by max_num_batched_tokens and its graphs by max_running).
"""
from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field

from tritium.engine.block_manager import BlockManager
from tritium.engine.config import EngineConfig
from tritium.engine.sequence import Sequence, SequenceStatus


@dataclass
class BatchInputs:
    """A step's inputs flattened over its sequences (plain lists; the runner makes tensors)."""

    input_ids: list[int]  # [T] tokens to compute, sequence after sequence
    positions: list[int]  # [T]
    slot_mapping: list[int]  # [T] KV-cache slot of each token
    query_lens: list[int]  # [B] n_new per sequence (cu_seqlens_q = cumsum)
    context_lens: list[int]  # [B] cached + new tokens per sequence (cu_seqlens_k = cumsum)
    block_tables: list[list[int]]  # [B][n_blocks_i]
    sample_rows: list[int]  # [S] row in [0, T) of the last token of each sampling sequence
    sample_seq_indices: list[int]  # [S] index in the batch of each sampling sequence
    seeds: list[int]  # [S]
    sample_offsets: list[int]  # [S] completion tokens so far (RNG step)


@dataclass
class ScheduledBatch:
    seqs: list[Sequence]
    num_new_tokens: list[int]  # tokens each sequence computes in this step
    is_prefill: bool
    starts: list[int] = field(default_factory=list)  # num_computed_tokens when scheduled

    def __post_init__(self):
        if not self.starts:
            self.starts = [s.num_computed_tokens for s in self.seqs]

    def __len__(self) -> int:
        return len(self.seqs)

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    @property
    def samples(self) -> list[bool]:
        """Whether each sequence samples a token after this step (False only for an unfinished chunk)."""
        return [c + n == s.num_tokens for s, c, n in zip(self.seqs, self.starts, self.num_new_tokens)]

    def step_inputs(self):
        """Per-sequence StepInputs (see tritium.engine.sequence); call before postprocess."""
        return [s.step_inputs(n, c) for s, c, n in zip(self.seqs, self.starts, self.num_new_tokens)]

    def inputs(self) -> BatchInputs:
        """Flat inputs; the same values as step_inputs(), built without per-sequence objects (hot path)."""
        out = BatchInputs([], [], [], [], [], [], [], [], [], [])
        ids, pos, slots = out.input_ids, out.positions, out.slot_mapping
        for i, (seq, c, n) in enumerate(zip(self.seqs, self.starts, self.num_new_tokens)):
            bs, table, end = seq.block_size, seq.block_table, c + n
            if end > len(table) * bs:
                raise ValueError(f"block table of sequence {seq.seq_id} does not cover position {end - 1}")
            if n == 1:  # decode
                ids.append(seq.token_ids[c])
                pos.append(c)
                slots.append(table[c // bs] * bs + c % bs)
            else:
                ids += seq.token_ids[c:end]
                pos += range(c, end)
                p = c
                while p < end:  # one contiguous slot range per block
                    blk = p // bs
                    stop = min(end, (blk + 1) * bs)
                    base = (table[blk] - blk) * bs
                    slots += range(base + p, base + stop)
                    p = stop
            out.query_lens.append(n)
            out.context_lens.append(end)
            out.block_tables.append(table[:])
            if end == len(seq.token_ids):
                out.sample_rows.append(len(ids) - 1)
                out.sample_seq_indices.append(i)
                out.seeds.append(seq.seed)
                out.sample_offsets.append(len(seq.token_ids) - seq.num_prompt_tokens)
        return out


class Scheduler:
    def __init__(self, config: EngineConfig, num_blocks: int | None = None, eos_token_id=None):
        num_blocks = config.num_kvcache_blocks if num_blocks is None else num_blocks
        if num_blocks < 1:
            raise ValueError("the scheduler needs the KV cache size: pass num_blocks or set num_kvcache_blocks")
        self.config = config
        self.block_size = config.kvcache_block_size
        self.max_budget = config.max_num_batched_tokens
        self.max_running = min(config.max_num_seqs, config.max_num_batched_tokens)
        # HF configs give an int, a list of ints, or None
        eos = eos_token_id if isinstance(eos_token_id, (list, tuple, set, frozenset)) else [eos_token_id]
        self.eos_token_ids = frozenset(int(e) for e in eos if e is not None)
        self.block_manager = BlockManager(num_blocks, self.block_size, config.enable_prefix_caching)
        self.rng = random.Random(config.seed)  # draws seeds for requests that bring none
        self.waiting: list[Sequence] = []  # sorted by arrival; hold no blocks
        self.running: list[Sequence] = []  # sorted by arrival; hold blocks
        self._arrivals = 0
        self._last_was_prefill = False
        self.num_preemptions = 0

    # ---- queue ---------------------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        """Queue a new request; ValueError if it could never fit (checked before anything is queued)."""
        if seq.status is not SequenceStatus.WAITING or seq.arrival is not None or seq.block_table:
            raise ValueError(f"sequence {seq.seq_id} was already added")
        if seq.block_size != self.block_size:
            raise ValueError(f"sequence block_size {seq.block_size} != kvcache_block_size {self.block_size}")
        total = seq.num_tokens + seq.sampling_params.max_tokens - seq.num_completion_tokens
        if total > self.config.max_model_len:
            raise ValueError(f"prompt ({seq.num_tokens} tokens) + max_tokens "
                             f"({seq.sampling_params.max_tokens}) = {total} exceeds max_model_len "
                             f"{self.config.max_model_len}")
        need = -(-(total - 1) // self.block_size)  # the last sampled token is never computed: no slot
        if need > self.block_manager.num_blocks:
            raise ValueError(f"request needs {need} KV blocks ({total} tokens) but the whole cache has "
                             f"{self.block_manager.num_blocks} blocks of {self.block_size} tokens: it can "
                             f"never fit; lower max_tokens or give the cache more memory")
        if seq.seed is None:
            seq.seed = self.rng.getrandbits(31)
        seq.arrival = self._arrivals
        self._arrivals += 1
        self.waiting.append(seq)  # newest arrival: the end keeps the list sorted

    def is_finished(self) -> bool:
        return not self.waiting and not self.running

    def abort(self, seq_id: int) -> Sequence | None:
        """Remove an unfinished request (blocks freed, finish_reason "abort"); None if not found."""
        for queue in (self.waiting, self.running):
            for seq in queue:
                if seq.seq_id == seq_id:
                    queue.remove(seq)
                    self.block_manager.deallocate(seq)
                    seq.status, seq.finish_reason = SequenceStatus.FINISHED, "abort"
                    return seq
        return None

    # ---- scheduling ----------------------------------------------------------------------------------
    def schedule(self) -> ScheduledBatch | None:
        decode_ready = any(self._prefill_done(s) for s in self.running)
        prefer_decode = decode_ready and (
            self.config.scheduler_policy == "alternate" and self._last_was_prefill)
        order = (self._schedule_decode, self._schedule_prefill) if prefer_decode else \
            (self._schedule_prefill, self._schedule_decode)
        for fn in order:
            batch = fn()
            if batch is not None:
                self._last_was_prefill = batch.is_prefill
                return batch
        assert self.is_finished(), "scheduler stalled with work left"
        return None

    @staticmethod
    def _prefill_done(seq: Sequence) -> bool:
        """Decode state: everything but the last (sampled) token is computed."""
        return seq.num_computed_tokens == seq.num_tokens - 1 and seq.num_completion_tokens > 0

    def _schedule_prefill(self) -> ScheduledBatch | None:
        budget, seqs, counts = self.max_budget, [], []
        partial = [s for s in self.running if not self._prefill_done(s)]
        assert len(partial) <= 1, "more than one unfinished prefill"
        for seq in partial:  # continue the chunked prefill first: its blocks are already held
            n = min(seq.num_uncomputed_tokens, budget)
            seqs.append(seq), counts.append(n)
            budget -= n
            if n < seq.num_uncomputed_tokens:
                return ScheduledBatch(seqs, counts, True)
        while self.waiting and budget > 0 and len(self.running) < self.max_running:
            seq = self.waiting[0]
            if not self.block_manager.can_allocate(seq):
                break
            self.waiting.pop(0)
            self.block_manager.allocate(seq)  # sets num_computed_tokens to the cached prefix
            seq.status = SequenceStatus.RUNNING
            bisect.insort(self.running, seq, key=lambda s: s.arrival)
            n = min(seq.num_uncomputed_tokens, budget)
            seqs.append(seq), counts.append(n)
            budget -= n
            if n < seq.num_uncomputed_tokens:
                break  # the one partial prefill, last in the batch
        return ScheduledBatch(seqs, counts, True) if seqs else None

    def _schedule_decode(self) -> ScheduledBatch | None:
        bm, seqs = self.block_manager, []
        for seq in self.running[:]:
            if len(seqs) >= self.max_running:
                break
            if seq.status is not SequenceStatus.RUNNING or not self._prefill_done(seq):
                continue  # preempted earlier in this loop, or mid-prefill
            if len(seq.block_table) < seq.num_blocks:  # its last token starts a new block
                while not bm.can_append(seq):
                    self._preempt(self.running[-1])  # the newest: never one already in this batch
                    if seq.status is not SequenceStatus.RUNNING:
                        break
                else:
                    bm.may_append(seq)
                if seq.status is not SequenceStatus.RUNNING:
                    continue
            seqs.append(seq)
        return ScheduledBatch(seqs, [1] * len(seqs), False) if seqs else None

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.deallocate(seq)  # resets num_computed_tokens; its full blocks stay cached
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        bisect.insort(self.waiting, seq, key=lambda s: s.arrival)

    # ---- results -------------------------------------------------------------------------------------
    def postprocess(self, batch: ScheduledBatch, token_ids) -> list[Sequence]:
        """Advance computed counts, append sampled tokens, finish sequences; returns the newly finished.

        ``token_ids`` holds one token per sampling sequence (``batch.samples``), either compactly (only the
        sampling ones, in batch order) or one entry per batch sequence (entries of non-sampling ones ignored).
        """
        samples = batch.samples
        token_ids = list(token_ids)
        if len(token_ids) == sum(samples) and len(token_ids) != len(batch.seqs):
            it = iter(token_ids)
            token_ids = [next(it) if s else None for s in samples]
        if len(token_ids) != len(batch.seqs):
            raise ValueError(f"expected {sum(samples)} or {len(batch.seqs)} token ids, got {len(token_ids)}")
        finished, bm, bs = [], self.block_manager, self.block_size
        for seq, start, n, tok, smp in zip(batch.seqs, batch.starts, batch.num_new_tokens, token_ids, samples):
            if seq.status is not SequenceStatus.RUNNING or seq.num_computed_tokens != start:
                continue  # aborted or preempted since it was scheduled
            seq.num_computed_tokens = start + n
            if len(seq.block_keys) < seq.num_computed_tokens // bs:  # a block became full: cache it
                bm.register_computed(seq)
            if not smp:
                continue
            seq.append_token(tok)
            reason = self._finish_reason(seq, int(tok))
            if reason is not None:
                seq.status, seq.finish_reason = SequenceStatus.FINISHED, reason
                self.running.remove(seq)
                self.block_manager.deallocate(seq)
                finished.append(seq)
        return finished

    def _finish_reason(self, seq: Sequence, tok: int) -> str | None:
        p = seq.sampling_params
        if (not p.ignore_eos and tok in self.eos_token_ids) or tok in p.stop_token_ids:
            return "stop"
        if seq.num_completion_tokens >= p.max_tokens or seq.num_tokens >= self.config.max_model_len:
            return "length"
        return None
