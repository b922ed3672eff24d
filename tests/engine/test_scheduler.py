"""Scheduler: chunked prefill, continuous batching, preemption, finishing, and the runner contract.

A fake model runner executes each batch against a simulated KV cache: it writes every new token's K/V
identity (its whole token prefix) into the slot the batch names, then "attends" by reading the whole
context back through the block table; the next token is a hash of that context. So any slip in
positions, slots, block tables, computed counts, prefix caching or preemption changes the output, and
every request must produce exactly the tokens of running it alone.
"""
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tritium.engine.config import EngineConfig
from tritium.engine.sampling_params import SamplingParams
from tritium.engine.scheduler import Scheduler
from tritium.engine.sequence import PLACEHOLDER, Sequence, SequenceStatus

BS = 16
VOCAB = 50


@dataclass(frozen=True)
class SeqStep:
    """One sequence's share of a step, built slot by slot: the oracle for the flat ``batch.inputs()``."""

    token_ids: list[int]
    positions: list[int]
    slots: list[int]
    context_len: int
    block_table: list[int]
    samples: bool
    seed: int | None
    sample_offset: int


def per_sequence_steps(batch) -> list[SeqStep]:
    out = []
    for seq, c, n, smp in zip(batch.seqs, batch.starts, batch.num_new_tokens, batch.samples):
        assert n >= 1 and c + n <= len(seq.token_ids)
        assert c + n <= len(seq.block_table) * seq.block_size, "block table does not cover the step"
        positions = list(range(c, c + n))
        out.append(SeqStep(seq.token_ids[c:c + n], positions, [seq.slot(p) for p in positions], c + n,
                           list(seq.block_table), smp, seq.seed, c + n - seq.num_prompt_tokens))
    return out


def next_token(context) -> int:
    return hash(tuple(context)) % VOCAB


def reference(prompt, params: SamplingParams, eos=None, max_model_len=4096):
    tokens, out = list(prompt), []
    while True:
        t = next_token(tokens)
        out.append(t)
        tokens.append(t)
        if (not params.ignore_eos and t == eos) or t in params.stop_token_ids:
            return out
        if len(out) >= params.max_tokens or len(tokens) >= max_model_len:
            return out


class FakeRunner:
    """Runs a batch against the simulated cache at once; a placeholder input takes the previous run's output
    (as the model runner takes the previous step's sampled ids on the device)."""

    def __init__(self, sched: Scheduler):
        self.sched, self.kv, self.log, self.last = sched, {}, [], []

    def run(self, batch):
        s = self.sched
        assert batch.seqs and len(set(id(q) for q in batch.seqs)) == len(batch.seqs)
        assert all(q.status is SequenceStatus.RUNNING for q in batch.seqs)
        assert len(batch) <= s.max_running and batch.num_tokens <= s.config.max_num_batched_tokens
        samples, d = batch.samples, batch.num_decodes
        assert batch.num_new_tokens[:d] == [1] * d and all(samples[:d])  # decodes first
        assert all(samples[d:-1])  # at most one unfinished prefill, and it comes last
        inputs = batch.inputs()
        per_seq = per_sequence_steps(batch)  # the fast flat path agrees with the per-sequence one
        assert inputs.input_ids == [t for si in per_seq for t in si.token_ids]
        assert inputs.positions == [t for si in per_seq for t in si.positions]
        assert inputs.slot_mapping == [t for si in per_seq for t in si.slots]
        assert inputs.context_lens == [si.context_len for si in per_seq]
        assert inputs.block_tables == [si.block_table for si in per_seq]
        assert inputs.seeds == [si.seed for si in per_seq if si.samples]
        assert inputs.sample_offsets == [si.sample_offset for si in per_seq if si.samples]
        assert len(inputs.input_ids) == len(inputs.positions) == len(inputs.slot_mapping) == batch.num_tokens
        assert inputs.sample_seq_indices == [i for i, x in enumerate(samples) if x]
        ids = list(inputs.input_ids)
        for row, src in zip(inputs.pending_rows, inputs.pending_src):
            assert ids[row] == PLACEHOLDER
            ids[row] = self.last[src]
        assert PLACEHOLDER not in ids
        out, writes, row = [], {}, 0
        for seq, si in zip(batch.seqs, per_seq):
            first = si.context_len - len(si.token_ids)
            assert si.positions == list(range(first, si.context_len))
            tokens = seq.token_ids[:first] + ids[row: row + len(si.token_ids)]  # the true context
            row += len(si.token_ids)
            for p, slot in zip(si.positions, si.slots):
                assert slot not in writes, "two tokens of one step write the same slot"
                blk = s.block_manager.blocks[slot // BS]
                assert blk.ref_count == 1 and blk.hash is None, "writing into a shared or cached block"
                writes[slot] = tuple(tokens[: p + 1])
            for p in range(si.context_len):  # attention reads the whole context through the table
                slot = si.block_table[p // BS] * BS + p % BS
                got = writes.get(slot) if slot in writes and p >= first else self.kv.get(slot)
                assert got == tuple(tokens[: p + 1]), f"seq {seq.seq_id}: wrong K/V at position {p}"
            if si.samples:
                out.append(next_token(tokens))
        self.kv.update(writes)
        self.log.append((d, [q.seq_id for q in batch.seqs], list(batch.num_new_tokens), samples))
        self.last = out
        return out


def make(num_blocks=64, eos=None, **kw):
    cfg = EngineConfig("unused", kvcache_block_size=BS, num_kvcache_blocks=num_blocks, **kw)
    sched = Scheduler(cfg, eos_token_id=eos)
    return sched, FakeRunner(sched)


def check_state(sched):
    bm = sched.block_manager
    bm.check_invariants()
    held = {}
    for q in sched.running:
        for b in q.block_table:
            held[b] = held.get(b, 0) + 1
    assert all(b.ref_count == held.get(b.block_id, 0) for b in bm.blocks)
    assert all(not q.block_table for q in sched.waiting)
    assert [q.arrival for q in sched.running] == sorted(q.arrival for q in sched.running)
    assert [q.arrival for q in sched.waiting] == sorted(q.arrival for q in sched.waiting)


def drive(sched, runner, arrivals=None, max_steps=10_000, pipelined=True):
    """Run to completion; arrivals: {step: [seqs]} added before that step. Pipelined as the engine runs:
    each step is scheduled and run before the previous one's results are posted. Returns the step count."""
    arrivals = dict(arrivals or {})
    step, in_flight = 0, None
    while not sched.is_finished() or arrivals or in_flight:
        for q in arrivals.pop(step, []):
            sched.add(q)
        batch = sched.schedule()
        launched = (batch, runner.run(batch)) if batch is not None else None
        if not pipelined and launched:
            launched, in_flight = None, launched
        if in_flight:
            sched.postprocess(*in_flight)
        in_flight = launched
        check_state(sched)
        step += 1
        assert step < max_steps, "no progress"
    assert sched.block_manager.num_free_blocks == sched.block_manager.num_blocks
    return step


def seq(prompt, block_size=BS, **params):
    return Sequence(prompt, SamplingParams(**params), block_size=block_size)


def prompt_of(n, salt=0):
    return [(i * 7 + salt) % VOCAB for i in range(n)]


def test_chunked_prefill_splits_a_long_prompt():
    sched, runner = make(max_num_batched_tokens=16)
    s = seq(prompt_of(50), max_tokens=5)
    sched.add(s)
    drive(sched, runner)
    assert [entry[2] for entry in runner.log[:4]] == [[16], [16], [16], [2]]
    assert [entry[3] for entry in runner.log[:4]] == [[False], [False], [False], [True]]
    assert all(d == 1 and n == [1] for d, _, n, _ in runner.log[4:]) and len(runner.log) == 8
    assert s.completion_token_ids == reference(s.prompt_token_ids, s.sampling_params)
    assert s.finish_reason == "length"


def test_decode_keeps_moving_while_a_long_prompt_prefills():
    sched, runner = make(max_num_batched_tokens=16)
    a, b = seq(prompt_of(3), max_tokens=30), seq(prompt_of(100, 1), max_tokens=3)
    drive(sched, runner, {0: [a], 1: [b]})
    chunks = [(d, ids, n) for d, ids, n, _ in runner.log if b.seq_id in ids[d:]]
    # Every step that prefills b also decodes a, first, and b's chunk takes the rest of the budget.
    assert all(d == 1 and ids[0] == a.seq_id for d, ids, _ in chunks)
    assert [n[1] for _, _, n in chunks] == [15] * 6 + [10]
    for q in (a, b):
        assert q.completion_token_ids == reference(q.prompt_token_ids, q.sampling_params)


def test_prefill_batches_many_prompts_under_the_budget():
    sched, runner = make(max_num_batched_tokens=40, max_num_seqs=3)
    seqs = [seq(prompt_of(n, n), max_tokens=4) for n in (10, 25, 7, 30, 1)]
    drive(sched, runner, {0: seqs})
    first = runner.log[0]
    assert first[0] == 0 and first[2] == [10, 25, 5] and first[3] == [True, True, False]
    assert max(len(ids) for _, ids, _, _ in runner.log) <= 3
    for q in seqs:
        assert q.completion_token_ids == reference(q.prompt_token_ids, q.sampling_params)


def test_decode_batches_respect_the_token_budget():
    sched, runner = make(max_num_batched_tokens=2, max_num_seqs=8)
    seqs = [seq(prompt_of(2, i), max_tokens=6) for i in range(5)]
    drive(sched, runner, {0: seqs})
    assert sched.max_running == 2 and max(len(ids) for _, ids, _, _ in runner.log) == 2
    for q in seqs:
        assert q.completion_token_ids == reference(q.prompt_token_ids, q.sampling_params)


def test_preemption_under_a_tiny_cache_starves_no_one():
    sched, runner = make(num_blocks=6, max_num_batched_tokens=64)
    seqs = [seq(prompt_of(20, i), max_tokens=40, ignore_eos=True) for i in range(5)]
    drive(sched, runner, {0: seqs})
    assert sched.num_preemptions > 0
    assert seqs[0].num_preemptions == 0  # the oldest always keeps running
    for q in seqs:
        assert q.completion_token_ids == reference(q.prompt_token_ids, q.sampling_params)
        assert q.num_completion_tokens == 40


def test_preemption_with_prefix_caching_off():
    sched, runner = make(num_blocks=5, max_num_batched_tokens=24, enable_prefix_caching=False)
    seqs = [seq(prompt_of(30, i % 2), max_tokens=25) for i in range(4)]
    drive(sched, runner, {0: seqs[:2], 3: seqs[2:]})
    assert sched.num_preemptions > 0 and not sched.block_manager.hash_to_block
    for q in seqs:
        assert q.completion_token_ids == reference(q.prompt_token_ids, q.sampling_params)


def test_prefix_cache_hits_skip_computation():
    for caching in (True, False):
        sched, runner = make(enable_prefix_caching=caching)
        a = seq(prompt_of(40), max_tokens=3)
        drive(sched, runner, {0: [a]})
        b = seq(prompt_of(40)[:35] + [1, 2, 3], max_tokens=3)
        sched.add(b)
        batch = sched.schedule()
        assert batch.starts == [32 if caching else 0] and batch.num_new_tokens == [38 - batch.starts[0]]
        sched.postprocess(batch, runner.run(batch))
        drive(sched, runner)
        assert b.completion_token_ids == reference(b.prompt_token_ids, b.sampling_params)


def test_finishing_on_eos_stop_tokens_and_max_tokens():
    p = prompt_of(5)
    toks = reference(p, SamplingParams(max_tokens=30, ignore_eos=True))
    eos, stop = toks[6], toks[3]
    assert eos not in toks[:6] and stop not in toks[:3]
    sched, runner = make(eos=eos)
    s_eos = seq(p, max_tokens=30)
    s_ign = seq(p, max_tokens=30, ignore_eos=True)
    s_stop = seq(p, max_tokens=30, stop_token_ids=[stop])
    s_len = seq(p, max_tokens=2)
    drive(sched, runner, {0: [s_eos, s_ign, s_stop, s_len]})
    assert (s_eos.completion_token_ids, s_eos.finish_reason) == (toks[:7], "stop")
    assert (s_ign.completion_token_ids, s_ign.finish_reason) == (toks, "length")
    assert (s_stop.completion_token_ids, s_stop.finish_reason) == (toks[:4], "stop")
    assert (s_len.completion_token_ids, s_len.finish_reason) == (toks[:2], "length")
    assert all(q.is_finished and not q.block_table for q in (s_eos, s_ign, s_stop, s_len))
    sched, runner = make(eos=[toks[9], eos])  # several EOS ids (HF configs may give a list)
    s_two = seq(p, max_tokens=30)
    drive(sched, runner, {0: [s_two]})
    assert s_two.completion_token_ids == toks[:7]


def test_requests_that_can_never_fit_are_rejected_at_add():
    sched, runner = make(num_blocks=4, max_model_len=200)
    ok = seq(prompt_of(10), max_tokens=55)  # 64 tokens, 63 need slots: 4 blocks
    sched.add(ok)
    for bad, match in [(seq(prompt_of(10), max_tokens=56), "never fit"),
                       (seq(prompt_of(150), max_tokens=51), "max_model_len")]:
        with pytest.raises(ValueError, match=match):
            sched.add(bad)
        assert bad.arrival is None and bad.seed is None
    with pytest.raises(ValueError, match="already added"):
        sched.add(ok)
    with pytest.raises(ValueError, match="block_size"):
        sched.add(seq(prompt_of(3), block_size=32))
    with pytest.raises(ValueError, match="empty"):
        Sequence([], SamplingParams())
    drive(sched, runner)  # the rejected ones left nothing behind; the good one is served
    assert ok.num_completion_tokens == 55


def test_seeds_and_batch_inputs():
    def drawn(cfg_seed):
        sched, _ = make(seed=cfg_seed)
        seqs = [seq([1, 2, 3]), seq([4], seed=99), seq([5, 6])]
        for q in seqs:
            sched.add(q)
        return [q.seed for q in seqs], sched
    seeds, sched = drawn(7)
    assert seeds == drawn(7)[0] and seeds != drawn(8)[0] and seeds[1] == 99
    assert all(isinstance(x, int) and 0 <= x < 2**31 for x in seeds)
    batch = sched.schedule()
    inp = batch.inputs()
    assert inp.input_ids == [1, 2, 3, 4, 5, 6] and inp.positions == [0, 1, 2, 0, 0, 1]
    assert inp.query_lens == [3, 1, 2] and inp.context_lens == [3, 1, 2]
    assert inp.sample_rows == [2, 3, 5] and inp.seeds == seeds and inp.sample_offsets == [0, 0, 0]
    tables = inp.block_tables
    assert inp.slot_mapping == [tables[0][0] * BS + i for i in range(3)] + [tables[1][0] * BS] + \
        [tables[2][0] * BS + i for i in range(2)]
    sched.postprocess(batch, [7, 8, 9])
    inp = sched.schedule().inputs()
    assert inp.input_ids == [7, 8, 9] and inp.positions == [3, 1, 2] and inp.sample_offsets == [1, 1, 1]


def test_abort_frees_blocks():
    sched, runner = make(num_blocks=8)
    a, b = seq(prompt_of(40), max_tokens=50), seq(prompt_of(20), max_tokens=5)
    sched.add(a), sched.add(b)
    batch = sched.schedule()
    out = runner.run(batch)  # the step is in flight when a is aborted
    assert sched.abort(a.seq_id) is a and a.finish_reason == "abort" and not a.block_table
    sched.postprocess(batch, out)  # a's result is ignored
    assert a.num_completion_tokens == 0 and sched.abort(12345) is None
    drive(sched, runner)
    assert b.completion_token_ids == reference(b.prompt_token_ids, b.sampling_params)


@settings(max_examples=max(60, 10 * settings.default.max_examples))
@given(data=st.data(), budget=st.integers(1, 80), max_seqs=st.integers(1, 6), extra_blocks=st.integers(0, 12),
       caching=st.booleans(), pipelined=st.booleans(), eos=st.sampled_from([None, 3]))
def test_random_workloads_match_running_alone(data, budget, max_seqs, extra_blocks, caching, pipelined, eos):
    base = data.draw(st.lists(st.integers(0, VOCAB - 1), min_size=20, max_size=70))
    reqs = []
    for _ in range(data.draw(st.integers(1, 6))):
        cut = data.draw(st.sampled_from([0, 1, 15, 16, 17, 32, 33, 48, 64, 70]))
        shared = base[:cut]  # shared prefixes (block-aligned or not) hit the cache
        own = data.draw(st.lists(st.integers(0, VOCAB - 1), min_size=0 if shared else 1, max_size=30))
        reqs.append((shared + own, data.draw(st.integers(1, 25)), data.draw(st.integers(0, 8))))
    need = max(-(-(len(p) + m - 1) // BS) for p, m, _ in reqs)
    sched, runner = make(num_blocks=need + extra_blocks, max_num_batched_tokens=budget,
                         max_num_seqs=max_seqs, enable_prefix_caching=caching, eos=eos)
    arrivals = {}
    seqs = []
    for prompt, m, at in reqs:
        q = seq(prompt, max_tokens=m, ignore_eos=eos is None)  # eos 3: some stop early, found a step late
        arrivals.setdefault(at, []).append(q)
        seqs.append(q)
    drive(sched, runner, arrivals, pipelined=pipelined)
    for q in seqs:
        assert q.completion_token_ids == reference(q.prompt_token_ids, q.sampling_params, eos=eos)
