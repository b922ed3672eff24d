"""Build the byte-level BPE tokenizer that synthetic checkpoints ship with.

The tokenizer is trained once from `tokenizer/corpus.txt` and committed (`tokenizer/tokenizer.json`), so
checkpoints are reproducible without running this. Rebuild with `python -m tritium.model.build_tokenizer`.
It pre-tokenizes like Qwen (a regex split on letters, single digits, punctuation runs and whitespace, then
byte-level) and ends with the three Qwen specials.
"""
from __future__ import annotations

from pathlib import Path

TOKENIZER_DIR = Path(__file__).parent / "tokenizer"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TARGET_VOCAB = 1024  # byte alphabet (256) + merges; the corpus is small, a few hundred merges is plenty
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def build(corpus: Path = TOKENIZER_DIR / "corpus.txt", out: Path = TOKENIZER_DIR / "tokenizer.json") -> Path:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TARGET_VOCAB,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([str(corpus)], trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.save(str(out))
    return out


if __name__ == "__main__":
    path = build()
    print(f"wrote {path}")
