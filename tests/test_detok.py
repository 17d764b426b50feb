"""Streaming detokenization: the pieces add up to the whole decoded reply, for any tokenizer persona loads."""

from __future__ import annotations

import pytest

from persona.engine.detok import StreamDecoder
from tests.test_sentencepiece_model import sentencepiece_model_dir  # noqa: F401 (a fixture)

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
        whole = tokenizer.decode(ids, skip_special_tokens=True)
        assert "".join(pieces) == decoder.text
        assert (
            whole.startswith(decoder.text) and len(whole) - len(decoder.text) <= 4
        )  # at most a held-back tail
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
def sentencepiece_tokenizer(sentencepiece_model_dir):  # noqa: F811 (the imported fixture)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(sentencepiece_model_dir)
