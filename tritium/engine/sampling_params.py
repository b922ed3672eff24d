"""Per-request sampling settings: a frozen, validated dataclass.

Semantics (applied by the sampler, in this order): temperature 0 is greedy (argmax; the other filters do
not matter); otherwise logits / temperature, then top-k (keep the k largest; 0 or -1 = off), top-p (keep
the smallest set of tokens whose probability sum reaches top_p; 1.0 = off), min-p (drop tokens whose
probability is below min_p times the largest; 0.0 = off), then sample.

Ending: a request stops after ``max_tokens`` completion tokens, on the tokenizer's EOS unless
``ignore_eos``, or on any of ``stop_token_ids`` (the stop token is kept as the last completion token).

``seed``: None lets the engine draw one from its own seeded generator (EngineConfig.seed), so whole runs
are reproducible; an explicit seed makes the request's samples independent of everything else in the
batch (the sampler keys its noise on (seed, number of completion tokens so far)).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

MAX_SEED = 2**63 - 1  # fits an int64 tensor


def is_int(x) -> bool:  # numpy ints count, bools do not
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    max_tokens: int = 64
    ignore_eos: bool = False
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None

    def __post_init__(self):
        t = self.temperature
        if not is_real(t) or not math.isfinite(t) or t < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {t!r}")
        if not is_int(self.top_k) or self.top_k < -1:
            raise ValueError(f"top_k must be an int >= -1 (0 or -1 = off), got {self.top_k!r}")
        p = self.top_p
        if not is_real(p) or not (0.0 < p <= 1.0):
            raise ValueError(f"top_p must be a number in (0, 1] (1 = off), got {p!r}")
        m = self.min_p
        if not is_real(m) or not (0.0 <= m <= 1.0):
            raise ValueError(f"min_p must be a number in [0, 1] (0 = off), got {m!r}")
        if not is_int(self.max_tokens) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an int >= 1, got {self.max_tokens!r}")
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos must be True or False, got {self.ignore_eos!r}")
        s = self.seed
        if s is not None and (not is_int(s) or not (0 <= s <= MAX_SEED)):
            raise ValueError(f"seed must be None or an int in [0, 2**63 - 1], got {s!r}")
        stop = self.stop_token_ids
        if isinstance(stop, (str, bytes)) or not hasattr(stop, "__iter__"):
            raise ValueError(f"stop_token_ids must be a list/tuple of token ids, got {stop!r}")
        stop = tuple(stop)
        bad = [x for x in stop if not is_int(x) or x < 0]
        if bad:
            raise ValueError(f"stop_token_ids must be non-negative ints, got bad entries {bad!r}")
        # frozen: store plain Python values once (numpy scalars, lists -> float/int/tuple)
        object.__setattr__(self, "stop_token_ids", tuple(int(x) for x in stop))
        for name, cast in (("temperature", float), ("top_p", float), ("min_p", float),
                           ("top_k", int), ("max_tokens", int)):
            object.__setattr__(self, name, cast(getattr(self, name)))
        if s is not None:
            object.__setattr__(self, "seed", int(s))

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0
