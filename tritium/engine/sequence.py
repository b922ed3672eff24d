"""One request's state: its tokens, how many of them have KV in the cache, and its KV block table.

Token accounting (the contract between the scheduler, the block manager and the model runner):

- ``token_ids`` = prompt + completion tokens so far. ``num_computed_tokens`` of them (a prefix) have their
  K/V in the cache: prefix-cache hits plus everything computed by earlier steps (prefill chunks, decodes).
- A step computes ``n_new`` tokens: ``token_ids[c : c + n_new]`` with ``c = num_computed_tokens``, at
  positions ``c .. c + n_new - 1``. Token at position ``p`` stores its K/V in slot
  ``block_table[p // block_size] * block_size + p % block_size``. Attention for those tokens sees the
  context ``0 .. c + n_new - 1`` (context length ``c + n_new``) through ``block_table``.
- If ``c + n_new == num_tokens`` the step reaches the last token, so the runner samples from that row's
  logits and the scheduler appends the sampled token (now ``num_computed == num_tokens - 1``: a decode step
  then computes exactly that one token). Otherwise the prefill is unfinished: no sampling for this sequence.
- Steps are pipelined (see scheduler.py): when a step is scheduled, every sequence that samples in it gets a
  PLACEHOLDER token appended at once (``num_pending_tokens`` counts them), so the next step can be scheduled
  before this one's result is back; the model runner takes a placeholder input from the previous step's
  sampled ids on the device (``pending_src`` is its row there). ``Scheduler.postprocess`` writes the real id.
- Sampling randomness is keyed on (``seed``, ``sample_offset``), where ``sample_offset`` is the number of
  completion tokens so far, so recomputation after preemption and different batch layouts draw the same
  noise for the same token.
"""
from __future__ import annotations

import enum
import itertools

from tritium.engine.sampling_params import SamplingParams

_seq_ids = itertools.count()
PLACEHOLDER = -1  # a sampled token whose id is still on the device


class SequenceStatus(enum.Enum):
    WAITING = enum.auto()  # queued; holds no KV blocks (new, or preempted by recompute)
    RUNNING = enum.auto()  # holds KV blocks; prefilling (maybe chunked) or decoding
    FINISHED = enum.auto()  # done (stop, length or abort); blocks freed


class Sequence:
    """A request. ``block_size`` must match the block manager's (checked at allocation)."""

    def __init__(
        self,
        token_ids,
        sampling_params: SamplingParams | None = None,
        *,
        block_size: int = 256,
        seed: int | None = None,
    ):
        token_ids = list(token_ids)
        if not token_ids:
            raise ValueError("a request needs at least one prompt token (got an empty prompt)")
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be a positive int, got {block_size!r}")
        self.seq_id = next(_seq_ids)
        self.status = SequenceStatus.WAITING
        self.sampling_params = sampling_params if sampling_params is not None else SamplingParams()
        self.token_ids: list[int] = token_ids
        self.num_prompt_tokens = len(token_ids)
        self.num_computed_tokens = 0  # prefix of token_ids whose K/V is in the cache
        self.block_size = block_size
        self.block_table: list[int] = []
        # An explicit seed in the params wins; else the given one; else the scheduler draws one at add().
        self.seed = self.sampling_params.seed if self.sampling_params.seed is not None else seed
        self.finish_reason: str | None = None  # "stop" | "length" | "abort" once finished
        self.arrival: int | None = None  # admission order, set by Scheduler.add (lower = older)
        self.num_preemptions = 0
        self.num_pending_tokens = 0  # trailing PLACEHOLDER tokens (sampled by steps still in flight)
        self.pending_src = -1  # row of the latest placeholder among its step's sampled ids
        # Prefix-cache bookkeeping, owned by BlockManager:
        self.block_hashes: list[int] = []  # chained content hash of full blocks 0.. (tokens never change)
        self.block_keys: list[int] = []  # registration key of each committed block 0.. (see block_manager)

    def __len__(self) -> int:
        return len(self.token_ids)

    def __repr__(self) -> str:
        return (f"Sequence(id={self.seq_id}, {self.status.name}, tokens={self.num_tokens} "
                f"(prompt {self.num_prompt_tokens}), computed={self.num_computed_tokens}, "
                f"blocks={self.block_table})")

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def last_token(self) -> int:
        return self.token_ids[-1]

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def completion_token_ids(self) -> list[int]:
        """Completion ids known so far (placeholders of steps in flight left out)."""
        return self.token_ids[self.num_prompt_tokens: self.num_known_tokens]

    @property
    def num_completion_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def sample_offset(self) -> int:
        """RNG step of the next sampled token: the number of completion tokens so far."""
        return self.num_completion_tokens

    @property
    def num_known_tokens(self) -> int:
        """Tokens whose ids the host holds (all but the trailing placeholders)."""
        return len(self.token_ids) - self.num_pending_tokens

    def drop_pending(self) -> None:
        """Forget the trailing placeholders (the request ended before their steps came back)."""
        del self.token_ids[self.num_known_tokens:]
        self.num_pending_tokens = 0

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def num_blocks(self) -> int:
        """Blocks needed to hold K/V for all current tokens."""
        return (len(self.token_ids) + self.block_size - 1) // self.block_size

    @property
    def num_full_blocks(self) -> int:
        return len(self.token_ids) // self.block_size

    @property
    def last_block_num_tokens(self) -> int:
        return len(self.token_ids) - (self.num_blocks - 1) * self.block_size

    def block(self, i: int) -> list[int]:
        """Token ids of logical block ``i``."""
        if not 0 <= i < self.num_blocks:
            raise IndexError(f"block {i} out of range for a sequence of {self.num_blocks} blocks")
        return self.token_ids[i * self.block_size: (i + 1) * self.block_size]

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(int(token_id))

    def slot(self, pos: int) -> int:
        """KV-cache slot of the token at position ``pos``."""
        return self.block_table[pos // self.block_size] * self.block_size + pos % self.block_size
