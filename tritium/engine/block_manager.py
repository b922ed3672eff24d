"""Paged KV-cache bookkeeping: fixed-size blocks, reference counts, prefix caching.

The KV cache is ``num_blocks`` blocks of ``block_size`` token slots. A sequence's ``block_table`` lists
the blocks holding its positions in order. A block's ``ref_count`` is the number of live sequences whose
table holds it; blocks with ref_count 0 sit in the free list, the rest in ``used_block_ids``.

Prefix caching (``enable_prefix_caching``):
- Only FULL blocks whose K/V has been COMPUTED are registered (``register_computed``, called after each
  step): never a block that is still being filled, so no one can hit K/V that has not been written yet,
  even when prefills are chunked over several steps.
- Block ``i``'s hash is ``xxh64(int32 bytes of its token ids, seed = hash of block i-1)`` (0 for block 0),
  so it covers the whole prefix. ``hash_to_block`` maps a hash to one registered block.
- Collisions are guarded, not just unlikely: a hit needs equal token ids AND the same parent: each
  registration gets a unique key, a child stores its parent's key, and a lookup for block ``i`` only accepts
  a candidate whose parent key is the key matched for block ``i - 1``. By induction a hit holds K/V computed
  for exactly the same token prefix, whatever the hash function does.
- Freed blocks keep their registration and can still be hit until reused. The free list is LRU: new blocks
  are taken from its front (least recently freed); unregistered freed blocks go to the front (they cache
  nothing), registered ones to the back. A sequence frees its blocks last-to-first so a prefix's tail is
  evicted before its head. Reusing a block evicts its registration.
- A block that is shared (ref_count > 1) or registered is never written again. Hence, when a sequence's
  whole token list is cached, ``allocate`` does not reuse the last block: it is recomputed in a private
  block (the last token must be computed to get logits; writing into a shared block is never done).

Sequence-side state used here: ``block_table``, ``num_computed_tokens`` (set by allocate to the cached
prefix length, reset by deallocate), ``block_hashes`` (content hashes of full blocks, cached on the
sequence because full blocks never change) and ``block_keys`` (the registration key matched or made for
each committed block).
"""
from __future__ import annotations

import itertools
from array import array
from collections import OrderedDict

import xxhash

from tritium.engine.sequence import Sequence


def hash_block(token_ids, prev_hash: int) -> int:
    """Chained hash of one full block (token ids as int32 bytes, seeded with the previous block's hash)."""
    return xxhash.xxh64_intdigest(array("i", token_ids).tobytes(), seed=prev_hash)


class Block:
    __slots__ = ("block_id", "ref_count", "hash", "token_ids", "key", "parent_key")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.hash: int | None = None  # set iff registered in hash_to_block
        self.token_ids: tuple[int, ...] | None = None  # tokens of a registered block
        self.key = 0  # unique registration key (0 = unregistered)
        self.parent_key = 0  # key of the previous block's registration (0 for block 0)

    def unregister(self) -> None:
        self.hash, self.token_ids, self.key, self.parent_key = None, None, 0, 0

    def __repr__(self) -> str:
        return f"Block({self.block_id}, ref={self.ref_count}, hash={self.hash})"


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True, hash_fn=None):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.hash_fn = hash_fn  # None: the module's hash_block, looked up per call (tests monkeypatch it)
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_block_ids: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.used_block_ids: set[int] = set()
        self.hash_to_block: dict[int, int] = {}
        self._keys = itertools.count(1)
        self.num_cache_hit_tokens = 0  # statistics: tokens served from the prefix cache

    # ---- queries ----------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self.free_block_ids)

    def _hash(self, token_ids, prev_hash: int) -> int:
        return (self.hash_fn or hash_block)(token_ids, prev_hash)

    def _content_hash(self, seq: Sequence, i: int) -> int:
        """Chained hash of full block ``i`` of ``seq``, memoised on the sequence."""
        while len(seq.block_hashes) <= i:
            j = len(seq.block_hashes)
            seq.block_hashes.append(self._hash(seq.block(j), seq.block_hashes[-1] if j else 0))
        return seq.block_hashes[i]

    def _match_prefix(self, seq: Sequence) -> list[int]:
        """Registered blocks holding seq's leading full blocks (same tokens, same prefix)."""
        if not self.enable_prefix_caching:
            return []
        hits, parent = [], 0
        for i in range(seq.num_full_blocks):
            bid = self.hash_to_block.get(self._content_hash(seq, i))
            if bid is None:
                break
            b = self.blocks[bid]
            if b.parent_key != parent or b.token_ids != tuple(seq.block(i)):
                break  # hash collision: different tokens or different prefix
            hits.append(bid)
            parent = b.key
        if hits and len(hits) * self.block_size >= seq.num_tokens:
            hits.pop()  # everything cached: recompute the last block privately (see module docstring)
        return hits

    def can_allocate(self, seq: Sequence) -> bool:
        """Enough free blocks to give ``seq`` a table covering all its tokens (cache hits included)."""
        hits = self._match_prefix(seq)
        hits_on_free = sum(1 for b in hits if self.blocks[b].ref_count == 0)  # these leave the free list
        return seq.num_blocks - len(hits) + hits_on_free <= self.num_free_blocks

    def can_append(self, seq: Sequence) -> bool:
        """Enough free blocks for the table to cover all of ``seq``'s tokens (0 or 1 more block in decode)."""
        return max(0, seq.num_blocks - len(seq.block_table)) <= self.num_free_blocks

    # ---- mutations --------------------------------------------------------------------------------
    def _take_free_block(self) -> int:
        bid, _ = self.free_block_ids.popitem(last=False)  # least recently freed
        b = self.blocks[bid]
        if b.hash is not None:  # reuse evicts the cached content
            if self.hash_to_block.get(b.hash) == bid:
                del self.hash_to_block[b.hash]
            b.unregister()
        b.ref_count = 1
        self.used_block_ids.add(bid)
        return bid

    def allocate(self, seq: Sequence) -> None:
        """Give ``seq`` blocks for all its tokens, reusing cached full blocks; sets num_computed_tokens."""
        if seq.block_table:
            raise ValueError(f"sequence {seq.seq_id} already holds blocks")
        if seq.block_size != self.block_size:
            raise ValueError(f"sequence block_size {seq.block_size} != block manager's {self.block_size}")
        hits = self._match_prefix(seq)
        if seq.num_blocks - len(hits) + sum(1 for b in hits if self.blocks[b].ref_count == 0) > \
                self.num_free_blocks:
            raise RuntimeError(f"not enough free KV blocks for sequence {seq.seq_id}; check can_allocate")
        for bid in hits:  # claim hits before taking fresh blocks, which could evict them
            b = self.blocks[bid]
            if b.ref_count == 0:
                del self.free_block_ids[bid]
                self.used_block_ids.add(bid)
            b.ref_count += 1
            seq.block_table.append(bid)
            seq.block_keys.append(b.key)
        while len(seq.block_table) < seq.num_blocks:
            seq.block_table.append(self._take_free_block())
        seq.num_computed_tokens = len(hits) * self.block_size
        self.num_cache_hit_tokens += seq.num_computed_tokens

    def may_append(self, seq: Sequence) -> None:
        """Before a decode step: add a block if the last (to-be-computed) token starts a new block."""
        if not self.can_append(seq):
            raise RuntimeError(f"no free KV block for sequence {seq.seq_id}; check can_append")
        while len(seq.block_table) < seq.num_blocks:
            seq.block_table.append(self._take_free_block())

    def register_computed(self, seq: Sequence) -> None:
        """Register every full block of ``seq`` whose K/V is computed (or its step enqueued: later readers run
        after it on the device) and whose token ids are known (no placeholder)."""
        if not self.enable_prefix_caching:
            return
        for i in range(len(seq.block_keys), min(seq.num_computed_tokens, seq.num_known_tokens) // self.block_size):
            bid = seq.block_table[i]
            h = self._content_hash(seq, i)
            tokens = tuple(seq.block(i))
            parent = seq.block_keys[i - 1] if i else 0
            other = self.hash_to_block.get(h)
            if other is None:
                b = self.blocks[bid]
                b.hash, b.token_ids, b.key, b.parent_key = h, tokens, next(self._keys), parent
                self.hash_to_block[h] = bid
                key = b.key
            else:
                o = self.blocks[other]
                if o.token_ids == tokens and o.parent_key == parent:
                    key = o.key  # same content already cached: chain children onto that registration
                else:
                    key = next(self._keys)  # true collision: leave unregistered, private key for children
            seq.block_keys.append(key)

    def deallocate(self, seq: Sequence) -> None:
        """Release ``seq``'s blocks (last first) and reset its cache state; freed blocks stay cached."""
        for bid in reversed(seq.block_table):
            b = self.blocks[bid]
            b.ref_count -= 1
            if b.ref_count == 0:
                self.used_block_ids.discard(bid)
                self.free_block_ids[bid] = None
                if b.hash is None:
                    self.free_block_ids.move_to_end(bid, last=False)  # caches nothing: reuse first
        seq.block_table = []
        seq.block_keys = []
        seq.num_computed_tokens = 0

    # ---- checking -----------------------------------------------------------------------------------
    def check_invariants(self) -> None:
        """Assert internal consistency (used by tests; cheap enough for debugging runs)."""
        free, used = set(self.free_block_ids), self.used_block_ids
        assert not (free & used) and free | used == set(range(self.num_blocks)), "free/used not a partition"
        for b in self.blocks:
            assert (b.ref_count == 0) == (b.block_id in free) and b.ref_count >= 0, f"bad ref count {b}"
            if b.hash is not None:
                assert self.hash_to_block.get(b.hash) == b.block_id, f"registered block not in table {b}"
                assert b.token_ids is not None and len(b.token_ids) == self.block_size and b.key > 0
            else:
                assert b.token_ids is None and b.key == 0
        for h, bid in self.hash_to_block.items():
            assert self.blocks[bid].hash == h, f"table entry {h} -> {bid} disagrees with the block"
        if not self.enable_prefix_caching:
            assert not self.hash_to_block
