"""Incremental detokenization: the released pieces add up to the decoded completion, cut before a stop string,
and no piece ever shows part of a stop string that is still forming."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tritium.engine.detokenize import IncrementalText, plain_decoder


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_checkpoint)


TOKENS = st.lists(st.integers(0, 1023), min_size=1, max_size=24)


@given(ids=TOKENS)
def test_pieces_add_up_to_the_decoded_text(tokenizer, ids):
    text = IncrementalText(tokenizer)
    pieces = [text.add(t, final=k == len(ids) - 1) for k, t in enumerate(ids)]
    assert "".join(pieces) == text.text == tokenizer.decode(ids, skip_special_tokens=True)
    assert not text.stopped


@given(ids=TOKENS, data=st.data())
def test_a_stop_string_cuts_the_text_before_it(tokenizer, ids, data):
    full = tokenizer.decode(ids, skip_special_tokens=True)
    if len(full) < 2:
        return
    start = data.draw(st.integers(0, len(full) - 2))
    stop = full[start:start + data.draw(st.integers(1, min(4, len(full) - start)))]
    text = IncrementalText(tokenizer, ["\x00never", stop])
    released = ""
    for k, t in enumerate(ids):
        released += text.add(t, final=k == len(ids) - 1)
        assert stop not in released
        if text.stopped:
            break
    assert text.stopped and released == text.text
    # cut at the first place the stop string shows up in the text decoded so far
    assert released == tokenizer.decode(text.token_ids, skip_special_tokens=True).split(stop)[0]
    assert full.startswith(released) or "\ufffd" in full


class _Stub:
    """A tokenizer whose decode marks its output, beside a backend that marks its own."""

    def __init__(self, clean_up):
        self.clean_up_tokenization_spaces = clean_up
        self.backend_tokenizer = type("Backend", (), {"decode": lambda self, ids, skip_special_tokens: "rust"})()

    def decode(self, ids, skip_special_tokens):
        return "transformers"


@given(ids=TOKENS)
def test_the_rust_decoder_stands_in_only_where_it_gives_the_same_text(tokenizer, ids):
    assert plain_decoder(tokenizer)(ids) == tokenizer.decode(ids, skip_special_tokens=True)
    assert plain_decoder(_Stub(False))(ids) == "rust"  # transformers would only forward to it
    assert plain_decoder(_Stub(True))(ids) == "transformers"  # it would clean up spaces after
