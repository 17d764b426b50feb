"""The llama.cpp backend: soft prompts fed as embeddings to the GGUF file, the same greedy replies as PyTorch.

Runs where llama-cpp-python is installed (`pip install 'persona[llama]'`); the tests of what a user
sees without it run everywhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from persona.engine.config import GenerationConfig
from persona.errors import ConfigError, ModelError
from persona.model import llamacpp
from persona.model.loader import load_chat_model

PERSONAS = Path(__file__).resolve().parent.parent / "personas"
GREEDY = GenerationConfig(temperature=0, repetition_penalty=1.0, max_new_tokens=12)
needs_llama = pytest.mark.skipif(
    not llamacpp.available(), reason="llama-cpp-python is not installed (persona[llama])"
)


def test_without_the_extra_the_llama_backend_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(llamacpp, "available", lambda: False)
    with pytest.raises(ModelError, match=r"persona\[llama\]"):
        load_chat_model(backend="llama")


def test_an_unknown_backend_names_the_choices():
    with pytest.raises(ModelError, match="torch, llama"):
        load_chat_model(backend="onnx")


@pytest.fixture(scope="module")
def engines(default_model_store):
    import os

    from persona.engine.chat import ChatEngine

    previous = os.environ.get("PERSONA_HOME")
    os.environ["PERSONA_HOME"] = str(default_model_store.parent)
    try:
        llama = ChatEngine(load_chat_model(backend="llama"))
        torch_engine = ChatEngine(load_chat_model(backend="torch", precision="fp32"))
    finally:
        if previous is None:
            os.environ.pop("PERSONA_HOME", None)
        else:
            os.environ["PERSONA_HOME"] = previous
    return llama, torch_engine


@needs_llama
@pytest.mark.integration
def test_a_soft_prompt_on_llama_cpp_gives_the_pytorch_greedy_reply(engines):
    from persona.prompt.softprompt import SoftPrompt

    llama, reference = engines
    assert (
        llama.loaded.fingerprint == reference.loaded.fingerprint
    )  # prompts trained on the HF copy fit
    hamlet = SoftPrompt.load(PERSONAS / "hamlet.safetensors")
    for persona in (None, hamlet):
        messages = [{"role": "user", "content": "What do you think of love?"}]
        llama.reply(messages, persona, GREEDY)
        reference.reply(messages, persona, GREEDY)
        assert len(reference.last.token_ids) >= 8
        assert llama.last.token_ids[:8] == reference.last.token_ids[:8], persona
    with_prompt, without = (
        llama.reply(messages, hamlet, GREEDY),
        llama.reply(messages, None, GREEDY),
    )
    assert with_prompt != without  # the embeddings reached the model


@needs_llama
@pytest.mark.integration
def test_llama_cpp_reuses_its_cache_across_turns_and_reencodes_after_a_switch(engines):
    from persona.engine.chat import ChatEngine
    from persona.prompt.softprompt import SoftPrompt

    llama, _ = engines
    hamlet = SoftPrompt.load(PERSONAS / "hamlet.safetensors")
    falstaff = SoftPrompt.load(PERSONAS / "falstaff.safetensors")
    llama.clear_cache()
    messages = [{"role": "user", "content": "Good morrow."}]
    reply = llama.reply(messages, hamlet, GREEDY)
    messages += [
        {"role": "assistant", "content": reply},
        {"role": "user", "content": "And what of the king?"},
    ]
    second = llama.reply(messages, hamlet, GREEDY)
    assert llama.last.reused_tokens >= len(llama.renderer.render(messages[:1], hamlet))
    llama.reply(messages, falstaff, GREEDY)  # another persona takes the one sequence
    again = llama.reply(messages, hamlet, GREEDY)
    assert (
        llama.last.reused_tokens == 0
    )  # its cache was lost to falstaff: encoded afresh, not reused wrongly
    fresh = ChatEngine(llama.loaded)
    assert again == second == fresh.reply(messages, hamlet, GREEDY)


@needs_llama
@pytest.mark.integration
def test_llama_cpp_refuses_a_batch_with_a_clear_error(engines):
    import torch

    llama, _ = engines
    with pytest.raises(ConfigError, match="one conversation at a time"):
        llama.model(input_ids=torch.tensor([[1, 2], [3, 4]]), cache=llama.model.new_cache())


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--backend", "llama"], "persona[llama]"),  # the extra is missing
        (["--backend", "llama", "--model", "{model}"], "persona[llama]"),
        (["--gguf", "/no/such.gguf"], "--gguf is for --backend llama"),
    ],
)
def test_backend_mistakes_are_one_line_errors(
    tiny_model_dir, monkeypatch, capsys, arguments, message
):
    from persona.cli.main import main

    monkeypatch.setattr(llamacpp, "available", lambda: False)
    argv = [
        "reply",
        "--no-persona",
        *[a.replace("{model}", str(tiny_model_dir)) for a in arguments],
        "hello",
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("persona: error:") and message in err and "\n" not in err


@needs_llama
def test_the_llama_backend_needs_a_gguf_file_for_another_model(tiny_model_dir, capsys):
    from persona.cli.main import main

    assert (
        main(
            ["reply", "--no-persona", "--backend", "llama", "--model", str(tiny_model_dir), "hello"]
        )
        == 1
    )
    err = capsys.readouterr().err.strip()
    assert "--gguf FILE" in err and "\n" not in err
