"""Incremental detokenization: the text each new token adds to a request's completion.

Each step decodes only a short window: the tokens since the last release point, once with and once without
the newest ones, and takes the difference (tokenizers merge bytes across tokens, so a token's text depends on
its neighbours). Text is released only when it is final: never while it ends in an incomplete multi-byte
character ("\ufffd"), and, when stop strings are set, never the last (longest stop - 1) characters, which
could still become the start of a stop string. Once a stop string appears, the text ends just before it and
`stopped` is set.
"""
from __future__ import annotations


def plain_decoder(tokenizer):
    """ids -> text as tokenizer.decode(ids, skip_special_tokens=True) gives it. Where transformers only forwards
    to the Rust tokenizer (a fast tokenizer that cleans up no spaces), that tokenizer's decode, called
    directly: a streamed token costs two decodes, and transformers' own layer around them is most of their
    time."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and getattr(tokenizer, "clean_up_tokenization_spaces", True) is False:
        return lambda ids: backend.decode(ids, skip_special_tokens=True)
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


class IncrementalText:
    def __init__(self, tokenizer, stop: tuple[str, ...] | list[str] = ()):
        self._decode = plain_decoder(tokenizer)
        self.stop = tuple(s for s in stop if s)
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.token_ids: list[int] = []
        self.text = ""  # released so far
        self.stopped = False
        self._decoded = ""  # all complete text so far (released or held back)
        self._prefix = self._read = 0  # token_ids[_prefix:_read] decode to the end of _decoded

    def _grow(self, final: bool) -> None:
        ids = self.token_ids
        before = self._decode(ids[self._prefix:self._read])
        after = self._decode(ids[self._prefix:])
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            self._decoded += after[len(before):]
            self._prefix, self._read = self._read, len(ids)

    def add(self, token_id: int, final: bool = False) -> str:
        """Append one token; returns the newly released text (all that is left when `final`)."""
        if self.stopped:
            return ""
        self.token_ids.append(token_id)
        self._grow(final)
        full, sent = self._decoded, len(self.text)
        # A stop string cannot start inside released text: that text was held back until it could not.
        hits = [i for i in (full.find(s, sent) for s in self.stop) if i >= 0]
        if hits:
            end, self.stopped = min(hits), True
        else:
            end = len(full) if final else max(sent, len(full) - self.hold)
        delta = full[sent:end]
        self.text += delta
        return delta
