"""A scheduled step and its flat inputs: what passes from the scheduler to the model runner."""
from __future__ import annotations

from dataclasses import dataclass, field

from tritium.engine.sequence import PLACEHOLDER, Sequence


@dataclass
class BatchInputs:
    """A step's inputs flattened over its sequences (plain lists; the runner makes tensors)."""

    input_ids: list[int]  # [T] tokens to compute, sequence after sequence (PLACEHOLDER: see pending_*)
    positions: list[int]  # [T]
    slot_mapping: list[int]  # [T] KV-cache slot of each token
    query_lens: list[int]  # [B] n_new per sequence (cu_seqlens_q = cumsum)
    context_lens: list[int]  # [B] cached + new tokens per sequence (cu_seqlens_k = cumsum)
    block_tables: list[list[int]]  # [B][n_blocks_i]
    sample_rows: list[int]  # [S] row in [0, T) of the last token of each sampling sequence
    sample_seq_indices: list[int]  # [S] index in the batch of each sampling sequence
    seeds: list[int]  # [S]
    sample_offsets: list[int]  # [S] completion tokens so far (RNG step)
    pending_rows: list[int]  # [P] rows of input_ids whose id is the previous step's sampled id ...
    pending_src: list[int]  # [P] ... number pending_src[j] of that step's sampled ids


@dataclass
class StepPlan:
    """Everything the model runner needs for one step, as plain data (tensor-parallel workers get it pickled)."""

    inputs: BatchInputs
    num_decodes: int
    is_prefill: bool
    params: list  # [S] SamplingParams of each sampling sequence


@dataclass
class ScheduledBatch:
    """One step. The first ``num_decodes`` sequences decode (one token each); the rest prefill."""

    seqs: list[Sequence]
    num_new_tokens: list[int]  # tokens each sequence computes in this step
    num_decodes: int = 0
    starts: list[int] = field(default_factory=list)  # num_computed_tokens when scheduled
    samples: list[bool] = field(default_factory=list)  # whether each sequence samples a token
    token_index: list[int] = field(default_factory=list)  # [S] where each sampled id goes in token_ids
    prev_src: list[int] = field(default_factory=list)  # pending_src of each sequence when scheduled

    def __post_init__(self):
        if not self.starts:
            self.starts = [s.num_computed_tokens for s in self.seqs]
        if not self.samples:
            self.samples = [c + n == s.num_tokens for s, c, n in zip(self.seqs, self.starts, self.num_new_tokens)]
        if not self.prev_src:
            self.prev_src = [s.pending_src for s in self.seqs]

    def __len__(self) -> int:
        return len(self.seqs)

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    @property
    def is_prefill(self) -> bool:
        """Whether any sequence prefills (a pure decode step can replay a CUDA graph)."""
        return self.num_decodes < len(self.seqs)

    @property
    def sampling_seqs(self) -> list[Sequence]:
        return [s for s, smp in zip(self.seqs, self.samples) if smp]

    def plan(self) -> StepPlan:
        x = self.inputs()
        params = [self.seqs[i].sampling_params for i in x.sample_seq_indices]
        return StepPlan(x, self.num_decodes, self.is_prefill, params)

    def inputs(self) -> BatchInputs:
        """Flat inputs of the step, as of scheduling (hot path: no per-sequence objects)."""
        out = BatchInputs([], [], [], [], [], [], [], [], [], [], [], [])
        ids, pos, slots = out.input_ids, out.positions, out.slot_mapping
        for i, (seq, c, n, smp) in enumerate(zip(self.seqs, self.starts, self.num_new_tokens, self.samples)):
            bs, table, end = seq.block_size, seq.block_table, c + n
            if end > len(table) * bs:
                raise ValueError(f"block table of sequence {seq.seq_id} does not cover position {end - 1}")
            if n == 1:  # decode
                tok = seq.token_ids[c]
                if tok == PLACEHOLDER:
                    out.pending_rows.append(len(ids))
                    out.pending_src.append(self.prev_src[i])
                ids.append(tok)
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
            if smp:
                out.sample_rows.append(len(ids) - 1)
                out.sample_seq_indices.append(i)
                out.seeds.append(seq.seed)
                out.sample_offsets.append(end - seq.num_prompt_tokens)
        return out
