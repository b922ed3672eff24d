"""Block manager: reference counts, LRU free list, prefix caching and its collision guards.

The stateful test simulates the KV cache itself: computing the token at position p of a sequence writes
the slot ``block_table[p // bs] * bs + p % bs`` with the identity of that K/V (the whole token prefix up to
p). Whatever the block manager does, every computed position of every live sequence must read back its own
prefix: that is "a cache hit only ever returns blocks holding the same tokens", checked at the K/V level.
"""
from collections import Counter

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import tritium.engine.block_manager as bm_mod
from tritium.engine.block_manager import BlockManager
from tritium.engine.sequence import Sequence

BS = 4


def run_prefill(bm, seq, kv=None):
    """Compute every uncomputed token of seq (table covers them) and register its full blocks."""
    for p in range(seq.num_computed_tokens, seq.num_tokens):
        if kv is not None:
            kv[seq.slot(p)] = tuple(seq.token_ids[: p + 1])
    seq.num_computed_tokens = seq.num_tokens
    bm.register_computed(seq)


def admit(bm, tokens, kv=None):
    seq = Sequence(tokens, block_size=BS)
    assert bm.can_allocate(seq)
    bm.allocate(seq)
    run_prefill(bm, seq, kv)
    return seq


def test_allocate_free_refcounts():
    bm = BlockManager(8, BS)
    s = Sequence(range(10), block_size=BS)
    bm.allocate(s)
    assert len(s.block_table) == 3 and s.num_computed_tokens == 0 and bm.num_free_blocks == 5
    assert all(bm.blocks[b].ref_count == 1 for b in s.block_table)
    bm.deallocate(s)
    assert bm.num_free_blocks == 8 and not bm.used_block_ids and s.block_table == []
    bm.check_invariants()


def test_prefix_hit_shares_blocks_and_backs_off_on_full_hit():
    bm = BlockManager(8, BS)
    a = admit(bm, list(range(10)))  # blocks [0..3] [4..7] full, [8, 9] partial
    b = Sequence(list(range(8)) + [42, 43, 44], block_size=BS)
    bm.allocate(b)
    assert b.num_computed_tokens == 8 and b.block_table[:2] == a.block_table[:2]
    assert [bm.blocks[x].ref_count for x in a.block_table[:2]] == [2, 2]
    # the whole token list cached: the last block is recomputed privately, never written while shared
    c = Sequence(list(range(8)), block_size=BS)
    bm.allocate(c)
    assert c.num_computed_tokens == 4 and c.block_table[0] == a.block_table[0]
    assert c.block_table[1] not in a.block_table
    d = Sequence(list(range(4)), block_size=BS)  # one full block, fully cached: nothing reused
    bm.allocate(d)
    assert d.num_computed_tokens == 0 and d.block_table[0] != a.block_table[0]
    bm.check_invariants()


def test_partial_and_uncomputed_blocks_are_not_registered():
    bm = BlockManager(8, BS)
    a = Sequence(list(range(10)), block_size=BS)
    bm.allocate(a)
    a.num_computed_tokens = 6  # a chunk: block 0 full and computed, block 1 half computed
    bm.register_computed(a)
    assert len(bm.hash_to_block) == 1
    b = Sequence(list(range(10)), block_size=BS)
    bm.allocate(b)
    assert b.num_computed_tokens == 4  # no hit on K/V that was not written yet


def test_freed_blocks_stay_cached_until_reused_lru():
    bm = BlockManager(4, BS)
    a = admit(bm, [1] * 8)  # two registered blocks
    a_blocks = list(a.block_table)
    bm.deallocate(a)
    assert bm.num_free_blocks == 4 and len(bm.hash_to_block) == 2
    b = Sequence([1] * 8 + [5], block_size=BS)
    assert bm.can_allocate(b)
    bm.allocate(b)
    assert b.num_computed_tokens == 8 and b.block_table[:2] == a_blocks
    bm.deallocate(b)
    # b freed last-to-first: its unregistered tail goes to the front, then the tail of the prefix
    order = list(bm.free_block_ids)
    assert bm.blocks[order[0]].hash is None
    regs = [x for x in order if bm.blocks[x].hash is not None]
    assert len(regs) == 2
    c = Sequence([7] * 12, block_size=BS)  # 3 fresh blocks: evicts the least recently freed registered one
    bm.allocate(c)
    assert len(bm.hash_to_block) == 1
    bm.check_invariants()
    bm.deallocate(c)
    d = Sequence([1] * 8 + [5], block_size=BS)
    bm.allocate(d)
    assert d.num_computed_tokens == 4  # the head of the prefix survived, its tail was evicted first


def test_can_allocate_counts_hits_on_free_blocks():
    bm = BlockManager(3, BS)
    a = admit(bm, [2] * 8)
    bm.deallocate(a)  # both registered blocks free
    b = Sequence([2] * 8 + [9] * 4, block_size=BS)  # needs 3 blocks, 2 of them cached but free
    assert bm.can_allocate(b)
    bm.allocate(b)
    assert bm.num_free_blocks == 0 and b.num_computed_tokens == 8
    c = Sequence([2] * 5, block_size=BS)  # 1 hit (in use) + 1 fresh: no free block left
    assert not bm.can_allocate(c)
    with pytest.raises(RuntimeError):
        bm.allocate(c)
    bm.check_invariants()


def test_may_append_at_block_boundary():
    bm = BlockManager(4, BS)
    s = admit(bm, [3] * 4)
    assert len(s.block_table) == 1 and bm.can_append(s)
    s.append_token(8)  # token 4 starts block 1
    assert s.num_blocks == 2
    bm.may_append(s)
    assert len(s.block_table) == 2 and bm.num_free_blocks == 2
    s.num_computed_tokens = 5
    s.append_token(9)
    bm.may_append(s)  # same block: nothing new
    assert len(s.block_table) == 2


def test_prefix_caching_disabled():
    bm = BlockManager(8, BS, enable_prefix_caching=False)
    a = admit(bm, list(range(9)))
    b = Sequence(list(range(9)), block_size=BS)
    bm.allocate(b)
    assert b.num_computed_tokens == 0 and not bm.hash_to_block
    assert not set(a.block_table) & set(b.block_table)
    bm.check_invariants()


def test_colliding_hash_is_guarded(monkeypatch):
    # every full block hashes alike: only a token comparison can tell them apart
    monkeypatch.setattr(bm_mod, "hash_block", lambda tokens, prev: 12345)
    bm = BlockManager(16, BS)
    admit(bm, [1, 1, 1, 1, 0])
    b = Sequence([2, 2, 2, 2, 0], block_size=BS)
    bm.allocate(b)
    assert b.num_computed_tokens == 0
    assert len(bm.hash_to_block) == 1


def test_prefix_guard_when_hash_ignores_the_chain(monkeypatch):
    # a hash of the block's own tokens only: equal blocks after different prefixes collide
    monkeypatch.setattr(bm_mod, "hash_block", lambda tokens, prev: hash(tuple(tokens)))
    bm = BlockManager(16, BS)
    x, y, w = [1] * 4, [2] * 4, [3] * 4
    admit(bm, x + y + [0])  # registers X and Y (Y's parent: X)
    admit(bm, w + [0])  # registers W
    d = Sequence(w + y + [0], block_size=BS)
    bm.allocate(d)
    assert d.num_computed_tokens == 4  # W hits, Y's K/V was computed after X: rejected
    e = Sequence(x + y + [5], block_size=BS)
    bm.allocate(e)
    assert e.num_computed_tokens == 8
    bm.check_invariants()


def test_registration_chains_children_only_onto_equal_prefixes(monkeypatch):
    monkeypatch.setattr(bm_mod, "hash_block", lambda tokens, prev: hash(tuple(tokens)))
    bm = BlockManager(16, BS)
    x, t, u, w = [1] * 4, [2] * 4, [0, 1, 2, 0], [3] * 4
    admit(bm, x + t + [0])  # registers X, then T behind X
    admit(bm, w + [0])  # registers W
    admit(bm, w + t + u + [0])  # T behind W: its slot holds T-behind-X, so U must not chain onto that
    r = Sequence(x + t + u + [0], block_size=BS)
    bm.allocate(r)
    assert r.num_computed_tokens == 8  # X and T hit; U was computed behind W + T: no hit
    bm.check_invariants()


def test_hash_is_chained():
    h0 = bm_mod.hash_block([1, 2, 3, 4], 0)
    assert h0 != bm_mod.hash_block([1, 2, 3, 4], 1)
    assert h0 == bm_mod.hash_block([1, 2, 3, 4], 0) and 0 <= h0 < 2**64


class BlockManagerMachine(RuleBasedStateMachine):
    """Random allocate / compute / append / fork / preempt / free; the K/V simulation checks every hit."""

    NUM_BLOCKS = 10
    HASH = None  # None: the real xxhash

    def __init__(self):
        super().__init__()
        self.bm = BlockManager(self.NUM_BLOCKS, BS, hash_fn=self.HASH)
        self.kv = {}  # slot -> identity of the K/V written there (the token prefix)
        self.live: list[Sequence] = []  # hold blocks
        self.waiting: list[Sequence] = []  # hold none (new or preempted)
        self.history = [[0, 1, 2, 0, 1, 2, 0, 1, 2, 2, 1, 0]]  # token lists to fork shared prefixes from

    @precondition(lambda self: len(self.waiting) < 5)
    @rule(data=st.data(), suffix=st.lists(st.integers(0, 2), min_size=0, max_size=9))
    def new_sequence(self, data, suffix):
        # splice block-aligned pieces of earlier token lists: shared prefixes (forks), and equal blocks
        # behind different prefixes (what a chain-ignoring or colliding hash must not confuse)
        tokens = []
        for _ in range(data.draw(st.integers(0, 3))):
            src = data.draw(st.sampled_from(self.history))
            a = data.draw(st.integers(0, len(src) // BS))
            b = data.draw(st.integers(a, len(src) // BS))
            tokens += src[a * BS: b * BS]
        tokens = tokens + suffix or [0]
        self.waiting.append(Sequence(tokens, block_size=BS))
        self.history.append(tokens)

    @precondition(lambda self: self.waiting)
    @rule(data=st.data())
    def allocate(self, data):
        seq = data.draw(st.sampled_from(self.waiting))
        if not self.bm.can_allocate(seq):
            free_before = self.bm.num_free_blocks
            with pytest.raises(RuntimeError):
                self.bm.allocate(seq)
            assert self.bm.num_free_blocks == free_before and not seq.block_table
            return
        self.bm.allocate(seq)
        c = seq.num_computed_tokens
        assert c % BS == 0 and c < seq.num_tokens and len(seq.block_table) == seq.num_blocks
        self.waiting.remove(seq)
        self.live.append(seq)

    @precondition(lambda self: any(s.num_uncomputed_tokens and len(s.block_table) == s.num_blocks
                                   for s in self.live))
    @rule(data=st.data(), n=st.integers(1, 9))
    def compute(self, data, n):
        seq = data.draw(st.sampled_from([s for s in self.live if s.num_uncomputed_tokens
                                         and len(s.block_table) == s.num_blocks]))
        end = min(seq.num_computed_tokens + n, seq.num_tokens)
        for p in range(seq.num_computed_tokens, end):
            b = self.bm.blocks[seq.block_table[p // BS]]
            assert b.ref_count == 1 and b.hash is None, "writing into a shared or registered block"
            self.kv[seq.slot(p)] = tuple(seq.token_ids[: p + 1])
        seq.num_computed_tokens = end
        self.bm.register_computed(seq)

    @precondition(lambda self: any(s.num_uncomputed_tokens == 0 for s in self.live))
    @rule(data=st.data(), token=st.integers(0, 2))
    def sample_and_append(self, data, token):
        seq = data.draw(st.sampled_from([s for s in self.live if s.num_uncomputed_tokens == 0]))
        seq.append_token(token)
        if self.bm.can_append(seq):
            self.bm.may_append(seq)
            assert len(seq.block_table) == seq.num_blocks
        else:
            with pytest.raises(RuntimeError):
                self.bm.may_append(seq)  # stays uncovered until blocks free up (grow) or preempted

    @precondition(lambda self: any(len(s.block_table) < s.num_blocks for s in self.live))
    @rule()
    def grow(self):
        for seq in self.live:
            if len(seq.block_table) < seq.num_blocks and self.bm.can_append(seq):
                self.bm.may_append(seq)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def preempt(self, data):
        seq = data.draw(st.sampled_from(self.live))
        self.bm.deallocate(seq)
        assert seq.num_computed_tokens == 0 and not seq.block_table and not seq.block_keys
        self.live.remove(seq)
        self.waiting.append(seq)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def finish(self, data):
        seq = data.draw(st.sampled_from(self.live))
        self.bm.deallocate(seq)
        self.live.remove(seq)
        self.history.append(list(seq.token_ids))

    @invariant()
    def consistent(self):
        bm = self.bm
        bm.check_invariants()
        held = Counter()
        for seq in self.live:
            assert len(set(seq.block_table)) == len(seq.block_table), "a block twice in one table"
            held.update(seq.block_table)
            for p in range(seq.num_computed_tokens):  # every computed position reads its own K/V
                assert self.kv.get(seq.slot(p)) == tuple(seq.token_ids[: p + 1]), f"wrong K/V at {p}"
        for seq in self.waiting:
            assert not seq.block_table and seq.num_computed_tokens == 0
        for b in bm.blocks:
            assert b.ref_count == held[b.block_id], f"{b} held by {held[b.block_id]} live sequences"
            if b.hash is not None:  # a registered block's slots hold its tokens' K/V
                kv = [self.kv.get(b.block_id * BS + j) for j in range(BS)]
                assert all(kv) and tuple(k[-1] for k in kv) == b.token_ids
                assert all(len(k) == len(kv[0]) + j for j, k in enumerate(kv))
                assert all(k[: len(kv[0]) - 1] == kv[0][:-1] for k in kv)  # one prefix
        assert bm.num_free_blocks == self.NUM_BLOCKS - len(held)

    def teardown(self):
        for seq in self.live:
            self.bm.deallocate(seq)
        assert self.bm.num_free_blocks == self.NUM_BLOCKS and not self.bm.used_block_ids
        assert all(b.ref_count == 0 for b in self.bm.blocks)
        self.bm.check_invariants()


class CollidingBlockManagerMachine(BlockManagerMachine):
    """A deliberately poor hash: only the first two tokens, chain ignored (9 values)."""

    HASH = staticmethod(lambda tokens, prev: tokens[0] + 3 * tokens[1])


class ChainlessHashMachine(BlockManagerMachine):
    """A hash of the block's own tokens only: equal blocks behind different prefixes always collide."""

    HASH = staticmethod(lambda tokens, prev: hash(tuple(tokens)))


_STATEFUL = settings(settings.default, max_examples=max(40, 8 * settings.default.max_examples),
                     stateful_step_count=50)
TestBlockManagerStateful = BlockManagerMachine.TestCase
TestBlockManagerStateful.settings = _STATEFUL
TestCollidingHashStateful = CollidingBlockManagerMachine.TestCase
TestCollidingHashStateful.settings = _STATEFUL
TestChainlessHashStateful = ChainlessHashMachine.TestCase
TestChainlessHashStateful.settings = _STATEFUL
