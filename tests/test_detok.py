"""Streaming detokenization: the pieces add up to the whole decoded reply, for any tokenizer persona loads."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from persona.engine.detok import StreamDecoder

TEXTS = [
    "Hello there, how are you today?",
    "Café naïve — 日本語のテキスト and emoji 🎭🎭 mixed in.   Spaces  and\nnew lines.",
    "To be, or not to be: that is the question. " * 8,
]


def check(tokenizer):
    for text in TEXTS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        decoder = StreamDecoder(tokenizer)
        pieces = [decoder.push(token) for token in ids]
        pieces.append(decoder.finish())
        assert "".join(pieces) == decoder.text == tokenizer.decode(ids, skip_special_tokens=True)
        assert not any("\ufffd" in piece for piece in pieces)
        assert (
            sum(1 for piece in pieces if piece) > len(ids) // 3
        )  # it streams, not one piece at the end


def test_pieces_add_up_on_the_tiny_tokenizer(tiny):
    check(tiny.tokenizer)


def test_pieces_add_up_on_a_sentencepiece_tokenizer(sentencepiece_tokenizer):
    check(sentencepiece_tokenizer)


@pytest.mark.integration
def test_pieces_add_up_on_the_default_model_tokenizer(default_model_store):
    from persona.model.chattokenizer import load

    check(load(default_model_store / "SmolLM2-135M-Instruct"))


@pytest.fixture(scope="module")
def sentencepiece_tokenizer(sentencepiece_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(sentencepiece_model_dir)


def streamed(tokenizer, ids: list[int]) -> str:
    decoder = StreamDecoder(tokenizer)
    pieces = [decoder.push(token) for token in ids]
    pieces.append(decoder.finish())
    return "".join(pieces)


def byte_token_ids(tokenizer, text: str) -> list[int]:
    """The byte-level tokens of `text`, one per UTF-8 byte: characters split across tokens."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_chars = bytes_to_unicode()
    return tokenizer.convert_tokens_to_ids([byte_chars[byte] for byte in text.encode("utf-8")])


SPLIT_CHARACTERS = "é日🎭😀"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(data=st.data())
def test_any_token_sequence_streams_to_its_whole_decoding_on_the_tiny_tokenizer(tiny, data):
    tokenizer = tiny.tokenizer
    bytes_of_characters = [byte_token_ids(tokenizer, char) for char in SPLIT_CHARACTERS]
    chunks = st.one_of(
        st.lists(st.integers(0, len(tokenizer) - 1), min_size=1, max_size=4),
        st.sampled_from(bytes_of_characters),  # a whole character, byte by byte
        st.sampled_from(bytes_of_characters).map(lambda ids: ids[:-1]),  # one left unfinished
    )
    ids = [token for chunk in data.draw(st.lists(chunks, max_size=25)) for token in chunk]
    assert streamed(tokenizer, ids) == tokenizer.decode(ids, skip_special_tokens=True)


@FUZZ
@given(data=st.data())
def test_any_token_sequence_streams_to_its_whole_decoding_on_a_sentencepiece_tokenizer(
    sentencepiece_tokenizer, data
):
    vocab = st.integers(0, len(sentencepiece_tokenizer) - 1)
    ids = data.draw(st.lists(vocab, max_size=60))
    assert streamed(sentencepiece_tokenizer, ids) == sentencepiece_tokenizer.decode(
        ids, skip_special_tokens=True
    )


class CountingTokenizer:
    """Counts the tokens StreamDecoder hands to decode: its work."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.decoded_tokens = 0

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        self.decoded_tokens += len(ids)
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def long_reply(tokenizer, count: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < count:
        ids += tokenizer(TEXTS[1] + " " + TEXTS[0], add_special_tokens=False)["input_ids"]
    return ids[:count]


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(long_reply, id="text"),
        pytest.param(
            lambda tokenizer, count: (
                long_reply(tokenizer, count // 2)
                + byte_token_ids(tokenizer, "é")[:1] * (count // 2)
            ),  # bytes that never decode
            id="text-then-invalid-bytes",
        ),
    ],
)
def test_work_per_token_is_bounded_in_a_long_reply(tiny, reply):
    ids = reply(tiny.tokenizer, 2000)
    counting = CountingTokenizer(tiny.tokenizer)
    assert streamed(counting, ids) == tiny.tokenizer.decode(ids, skip_special_tokens=True)
    assert counting.decoded_tokens < 30 * len(ids)  # decoding the reply at every token: ~1000x
