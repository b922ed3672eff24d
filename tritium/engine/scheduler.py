"""Continuous batching: which sequences run in the next step, and how many tokens each computes.

Loop (driven by the engine, one step in flight while the next is scheduled)::

    batch = scheduler.schedule()          # commits the step: computed counts advance, placeholders appended
    handle = runner.launch(batch)         # enqueued on the GPU; placeholder inputs come from the last step
    scheduler.postprocess(prev_batch, prev_handle.tokens())   # the previous step's ids replace its placeholders
    prev_batch, prev_handle = batch, handle

``schedule`` may be called again before the last batch's ``postprocess`` (that is the point: host work
overlaps the GPU); the engine keeps at most one step in flight, so a placeholder input always comes from
the step just before. A sequence that stops on EOS or a stop token is found one step late: the step
scheduled meanwhile computed one token for it that is dropped. Reaching max_tokens or max_model_len is
known at scheduling, so no step is wasted on it.

A step is mixed: first every running sequence in decode state (everything computed but its last token)
computes that token and samples one more, oldest first, at most ``max_running``; then prefill chunks fill
the rest of ``max_num_batched_tokens``: the unfinished chunked prefill, if any, then waiting sequences
oldest first while the budget lasts, fewer than ``max_running`` hold blocks, and the block manager can
allocate (FIFO: admission stops at the first that does not fit, or whose last sampled id is not back yet).
A prompt longer than the remaining budget gets a chunk of what is left: it is the one partial prefill of
the step and the last sequence of the batch; it samples only in the step that finishes it. All of a
sequence's blocks are allocated when it is admitted, so a started prefill never waits for memory.

A decoding sequence whose last token needs a new block and finds none preempts the NEWEST running sequence
(by recompute: its blocks are freed, it goes back to the waiting queue in age order and later re-prefills
prompt + completion so far, mostly from the prefix cache), possibly itself. The oldest request is never
preempted (``add`` guarantees that one request alone fits in the cache) and every request finishes.

``max_running = min(max_num_seqs, max_num_batched_tokens)`` so the decode part never exceeds the token
budget (the runner sizes its graphs by max_running).
"""
from __future__ import annotations

import bisect
import random

from tritium.engine.batch import ScheduledBatch
from tritium.engine.block_manager import BlockManager
from tritium.engine.config import EngineConfig
from tritium.engine.sequence import PLACEHOLDER, Sequence, SequenceStatus


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
                    self._finish(seq, "abort")
                    return seq
        return None

    def _finish(self, seq: Sequence, reason: str) -> None:
        self.block_manager.deallocate(seq)
        seq.drop_pending()
        seq.status, seq.finish_reason = SequenceStatus.FINISHED, reason

    # ---- scheduling ----------------------------------------------------------------------------------
    def schedule(self) -> ScheduledBatch | None:
        """The next step (decodes first, then prefill chunks), committed; None when nothing can run until
        an earlier step's results are back (or nothing is left)."""
        seqs = self._schedule_decodes()
        num_decodes, counts = len(seqs), [1] * len(seqs)
        self._schedule_prefills(seqs, counts, self.max_budget - len(seqs))
        if not seqs:
            return None
        batch = ScheduledBatch(seqs, counts, num_decodes=num_decodes)
        self._commit(batch)
        return batch

    def _decoding(self, seq: Sequence) -> bool:
        """Decode state: everything but the last token computed (it was sampled), and more to come."""
        return (seq.num_computed_tokens == seq.num_tokens - 1 and seq.num_completion_tokens > 0
                and not self._at_length_limit(seq))

    def _at_length_limit(self, seq: Sequence) -> bool:
        return (seq.num_completion_tokens >= seq.sampling_params.max_tokens
                or seq.num_tokens >= self.config.max_model_len)

    def _schedule_decodes(self) -> list[Sequence]:
        bm, seqs = self.block_manager, []
        for seq in self.running[:]:
            if len(seqs) >= self.max_running:
                break
            if seq.status is not SequenceStatus.RUNNING or not self._decoding(seq):
                continue  # preempted earlier in this loop, mid-prefill, or waiting to be finished
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
        return seqs

    def _schedule_prefills(self, seqs: list[Sequence], counts: list[int], budget: int) -> None:
        """Append prefill chunks to the step: the unfinished chunked prefill first, then admissions."""
        partial = [s for s in self.running if s.num_computed_tokens < s.num_tokens - 1
                   or (s.num_computed_tokens < s.num_tokens and s.num_completion_tokens == 0)]
        assert len(partial) <= 1, "more than one unfinished prefill"
        for seq in partial:  # its blocks are already held
            if budget <= 0:
                return
            n = min(seq.num_uncomputed_tokens, budget)
            seqs.append(seq), counts.append(n)
            budget -= n
            if n < seq.num_uncomputed_tokens:
                return
        while self.waiting and budget > 0 and len(self.running) < self.max_running:
            seq = self.waiting[0]
            if seq.num_pending_tokens or not self.block_manager.can_allocate(seq):
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

    def _commit(self, batch: ScheduledBatch) -> None:
        """Advance computed counts and give every sampling sequence a placeholder for its next id."""
        j = 0
        for seq, c, n, smp in zip(batch.seqs, batch.starts, batch.num_new_tokens, batch.samples):
            seq.num_computed_tokens = c + n
            if smp:
                batch.token_index.append(seq.num_tokens)
                seq.token_ids.append(PLACEHOLDER)
                seq.num_pending_tokens += 1
                seq.pending_src = j
                j += 1

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.deallocate(seq)  # resets num_computed_tokens; its full blocks stay cached
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        bisect.insort(self.waiting, seq, key=lambda s: s.arrival)

    # ---- results -------------------------------------------------------------------------------------
    def postprocess(self, batch: ScheduledBatch, token_ids) -> list[Sequence]:
        """Write a step's sampled ids (one per sampling sequence, in batch order) over its placeholders,
        register newly computed full blocks and finish sequences; returns the newly finished."""
        sampling = batch.sampling_seqs
        if len(token_ids) != len(sampling):
            raise ValueError(f"expected {len(sampling)} token ids, got {len(token_ids)}")
        finished = []
        for seq, idx, tok in zip(sampling, batch.token_index, token_ids):
            if seq.is_finished:
                continue  # aborted, or stopped by an earlier step
            seq.token_ids[idx] = int(tok)
            seq.num_pending_tokens -= 1
            reason = self._finish_reason(seq, idx)
            if reason is not None:
                del seq.token_ids[idx + 1:]  # a later step's placeholder: its token is dropped
                seq.num_pending_tokens = 0
                self._finish(seq, reason)
                finished.append(seq)
        if finished:
            done = set(map(id, finished))
            self.running = [s for s in self.running if id(s) not in done]
            self.waiting = [s for s in self.waiting if id(s) not in done]
        for seq in batch.seqs:
            if seq.status is SequenceStatus.RUNNING:
                self.block_manager.register_computed(seq)
        return finished

    def _finish_reason(self, seq: Sequence, idx: int) -> str | None:
        p, tok = seq.sampling_params, seq.token_ids[idx]
        if (not p.ignore_eos and tok in self.eos_token_ids) or tok in p.stop_token_ids:
            return "stop"
        if idx + 1 - seq.num_prompt_tokens >= p.max_tokens or idx + 1 >= self.config.max_model_len:
            return "length"
        return None
