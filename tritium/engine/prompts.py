"""Prompts to token ids: what the engine and the server's HTTP process (which has no engine) both need."""
from __future__ import annotations

import numbers
from typing import Sequence as Seq


class PromptEncoder:
    def __init__(self, tokenizer, vocab_size: int):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size

    @classmethod
    def from_checkpoint(cls, model: str) -> "PromptEncoder":
        from transformers import AutoTokenizer

        from tritium.model.loader import load_hf_config

        return cls(AutoTokenizer.from_pretrained(model), load_hf_config(model).vocab_size)

    def encode(self, prompt) -> list[int]:
        """Token ids of a prompt: text encoded as the tokenizer does (with its BOS, where it adds one), or
        token ids as given; ValueError if bad."""
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
        elif isinstance(prompt, Seq) and all(isinstance(t, numbers.Integral) for t in prompt):
            ids = [int(t) for t in prompt]
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise ValueError(f"token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")
        else:
            raise ValueError(f"a prompt must be a str or a list of int token ids, got {type(prompt).__name__}")
        if not ids:
            raise ValueError("empty prompt: a request needs at least one token")
        return ids

    def chat(self, messages) -> list[int]:
        """Token ids of a conversation in the checkpoint's chat template, ready for the assistant's turn (the
        template writes its own special tokens, so none is added). ValueError if the template refuses it."""
        from jinja2 import TemplateError

        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except TemplateError as e:  # e.g. roles that do not alternate
            raise ValueError(f"the chat template rejected the messages: {e}") from None
        return self.tokenizer.encode(text, add_special_tokens=False)
