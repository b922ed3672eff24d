"""Incremental detokenization: the text each new token adds to a request's completion.

Text is released only when it is final: never while the decoded completion ends in an incomplete multi-byte
character ("\ufffd"), and, when stop strings are set, never the last (longest stop - 1) characters, which
could still become the start of a stop string. Once a stop string appears, the text ends just before it and
`stopped` is set. The whole completion is decoded each time (tokenizers merge bytes across tokens).
"""
from __future__ import annotations


class IncrementalText:
    def __init__(self, tokenizer, stop: tuple[str, ...] | list[str] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.token_ids: list[int] = []
        self.text = ""  # released so far
        self.stopped = False

    def add(self, token_id: int, final: bool = False) -> str:
        """Append one token; returns the newly released text (all that is left when `final`)."""
        if self.stopped:
            return ""
        self.token_ids.append(token_id)
        full = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        sent = len(self.text)
        # A stop string cannot start inside released text: that text was held back until it could not.
        hits = [i for i in (full.find(s, sent) for s in self.stop) if i >= 0]
        if hits:
            end, self.stopped = min(hits), True
        elif final:
            end = len(full)
        elif full.endswith("\ufffd"):
            end = sent
        else:
            end = max(sent, len(full) - self.hold)
        delta = full[sent:end]
        self.text += delta
        return delta
