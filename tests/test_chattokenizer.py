"""ChatTokenizer (the fast-loading chat tokenizer) does what AutoTokenizer does on every call persona makes."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from persona.model import chattokenizer
from persona.prompt.render import Renderer
from tests.conftest import edited_copy

CONVERSATIONS = [
    [{"role": "user", "content": "Hello there!"}],
    [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris, I believe."},
        {"role": "user", "content": "And of Spain? Café, naïve, 日本語, emoji 🎭."},
    ],
    [{"role": "system", "content": "Speak as a pirate."}, {"role": "user", "content": "Ahoy"}],
]


def assert_same(directory):
    light = chattokenizer.load(directory)
    reference = AutoTokenizer.from_pretrained(directory)
    assert light is not None, (
        "these files are plain tokenizer.json ones: ChatTokenizer should take them"
    )
    for attribute in ("eos_token_id", "pad_token_id", "bos_token_id", "eos_token", "chat_template"):
        assert getattr(light, attribute) == getattr(reference, attribute), attribute
    assert light.get_vocab() == reference.get_vocab()
    assert set(light.all_special_tokens) == set(reference.all_special_tokens)
    assert light.added_tokens_encoder == reference.added_tokens_encoder
    ours, theirs = Renderer(light), Renderer(reference)
    for messages in CONVERSATIONS:
        for persona in (None, object()):
            assert ours.text(messages, persona) == theirs.text(messages, persona)
            ids = ours.render(messages, persona)
            assert ids == theirs.render(messages, persona)
            for skip in (True, False):
                assert light.decode(ids, skip_special_tokens=skip) == reference.decode(
                    ids, skip_special_tokens=skip
                )
        assert ours.render(messages, None, system="Be brief.") == theirs.render(
            messages, None, system="Be brief."
        )
    context = CONVERSATIONS[1][:1]
    assert ours.render_example(context, "Madrid.", object()) == theirs.render_example(
        context, "Madrid.", object()
    )
    assert ours.render_example([], "I open the scene.", object()) == theirs.render_example(
        [], "I open the scene.", object()
    )


def test_the_tiny_model_tokenizer_matches_autotokenizer(tiny_model_dir):
    assert_same(tiny_model_dir)


@pytest.mark.integration
def test_the_default_model_tokenizer_matches_autotokenizer(default_model_store):
    assert_same(default_model_store / "SmolLM2-135M-Instruct")


@pytest.mark.parametrize(
    "change",
    [
        {"tokenizer_class": "LlamaTokenizer"},
        {"auto_map": {"AutoTokenizer": ["tok.Custom", None]}},
        {"clean_up_tokenization_spaces": True},
    ],
)
def test_anything_else_is_left_to_autotokenizer(tiny_model_dir, tmp_path, change):
    assert (
        chattokenizer.load(
            edited_copy(tiny_model_dir, tmp_path / "model", "tokenizer_config.json", change)
        )
        is None
    )


def test_an_unreadable_chat_template_file_is_left_to_autotokenizer(tiny_model_dir, tmp_path):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    (copy / "chat_template.jinja").write_bytes(b"{{ messages \xff\xfe }}")  # not UTF-8
    assert chattokenizer.load(copy) is None


def test_chat_loads_the_light_tokenizer_and_the_engine_stops_on_the_same_tokens(
    tiny_model_dir, tiny
):
    from persona.engine.chat import stop_token_ids
    from persona.model.loader import load_chat_model

    loaded = load_chat_model(tiny_model_dir, precision="fp32")
    assert isinstance(loaded.tokenizer, chattokenizer.ChatTokenizer)
    assert stop_token_ids(loaded) == stop_token_ids(tiny)
