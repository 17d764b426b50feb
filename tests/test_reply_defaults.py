"""`persona reply` with a persona's own defaults: flags given win, the persona's fill the rest,
its stop strings end the reply, locally and through a running server alike."""

from __future__ import annotations

import json

import pytest

from persona.cli.main import main
from persona.library import open_library
from persona.paths import library_path
from tests.serving import add_persona, running_server


@pytest.fixture
def lear(tiny):
    """`lear` in the default library, greedy and at most 3 tokens by its own defaults."""
    add_persona(library_path(), "lear", tiny.fingerprint, seed=4)
    set_defaults({"temperature": 0, "max_new_tokens": 3, "repetition_penalty": 1.0})
    return "lear"


def set_defaults(changes: dict) -> None:
    lib = open_library()
    try:
        lib.set_defaults("lear", changes)
    finally:
        lib.close()


def reply(capsys, tiny_model_dir, *arguments: str) -> dict:
    code = main(
        [
            "reply",
            "--model",
            str(tiny_model_dir),
            "--persona",
            "lear",
            "--json",
            *arguments,
            "hello there",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    record = json.loads(out)
    record.pop("seconds")
    return record


def test_the_persona_s_defaults_apply_where_no_flag_is_given(capsys, tiny_model_dir, lear):
    short = reply(capsys, tiny_model_dir, "--local")
    assert short["tokens"] <= 3 and short["reply"]
    assert reply(capsys, tiny_model_dir, "--local") == short  # greedy: the persona's temperature 0
    longer = reply(capsys, tiny_model_dir, "--local", "--max-tokens", "12")
    assert longer["tokens"] > 3 or longer["finish_reason"] == "stop"
    assert longer["reply"].startswith(short["reply"])


def test_the_persona_s_stop_strings_end_the_reply(capsys, tiny_model_dir, lear):
    whole = reply(capsys, tiny_model_dir, "--local", "--max-tokens", "12")["reply"]
    if len(whole) < 4:
        pytest.skip("the tiny model's reply is too short to cut")
    stop = whole[2:4]
    set_defaults({"stop": [stop]})
    cut = reply(capsys, tiny_model_dir, "--local", "--max-tokens", "12")
    assert cut["reply"] == whole[: whole.index(stop)] and cut["finish_reason"] == "stop"
    code = main(
        [
            "reply",
            "--model",
            str(tiny_model_dir),
            "--persona",
            "lear",
            "--local",
            "--max-tokens",
            "12",
            "hello there",
        ]
    )
    assert code == 0 and capsys.readouterr().out == whole[: whole.index(stop)] + "\n"


def test_a_running_server_applies_them_too(capsys, tiny_model_dir, lear, monkeypatch):
    # the server takes auto precision as chat does (int8), and its rows compute what chat's do
    local = reply(capsys, tiny_model_dir, "--local")
    with running_server("--model", str(tiny_model_dir)):
        import persona.model.loader as loader

        def refuse(*args, **kwargs):
            raise AssertionError("the reply loaded a model instead of asking the server")

        monkeypatch.setattr(loader, "load_chat_model", refuse)
        assert reply(capsys, tiny_model_dir) == local
