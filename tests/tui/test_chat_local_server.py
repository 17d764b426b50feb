"""Plain `persona chat` through a `persona serve` already running here (its owner-only socket),
when that server serves the model and library the chat asks for; otherwise the chat loads its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from persona.cli.main import build_parser
from persona.serve.client import local_runner
from persona.tui.app import PersonaChatApp
from persona.tui.backend import remote_backend
from tests.serving import SERVED, serving_home, tiny_server
from tests.tui.helpers import notifications, send, speakers, status_line


@pytest.fixture(scope="module")
def server(tmp_path_factory: Any, tiny: Any, tiny_model_dir: Path) -> Any:
    home = serving_home(tmp_path_factory.mktemp("local-serve-home"), tiny.fingerprint)
    running = tiny_server(home, tiny_model_dir)
    yield running
    running.stop()


@pytest.fixture
def here(server: Any, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The chat runs in the server's data dir: its socket and its library."""
    monkeypatch.setenv("PERSONA_HOME", str(server.home))
    return server.home


def chat_args(*flags: str) -> Any:
    return build_parser().parse_args(["chat", *flags])


def test_a_server_for_the_same_model_and_library_answers_the_chat(
    here: Path, tiny_model_dir: Path
) -> None:
    runner = local_runner(chat_args("--model", str(tiny_model_dir)))
    assert runner is not None
    try:
        assert {entry["id"] for entry in runner.models() if entry["persona"]} == set(SERVED)
    finally:
        runner.close()


@pytest.mark.parametrize("other", ["model", "library", "precision"])
def test_a_server_for_something_else_is_left_alone(
    other: str, here: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    flags = {
        "model": ["--model", str(tmp_path)],
        "library": ["--model", str(tiny_model_dir), "--library", str(tmp_path / "other.db")],
        "precision": ["--model", str(tiny_model_dir), "--precision", "int8"],
    }[other]
    assert local_runner(chat_args(*flags)) is None


def test_no_server_no_runner(tiny_model_dir: Path) -> None:
    assert local_runner(chat_args("--model", str(tiny_model_dir))) is None  # the test's own home


async def test_a_chat_through_the_local_server_saves_its_replies_in_the_library(
    here: Path, tiny_model_dir: Path
) -> None:
    from persona.library import open_library

    runner = local_runner(chat_args("--model", str(tiny_model_dir)))
    library = open_library()
    try:
        backend = remote_backend(runner, library, "persona serve")
        app = PersonaChatApp(backend, library, persona="falstaff", overrides={"temperature": 0})
        async with app.run_test(size=(100, 40)) as pilot:
            assert "@ persona serve" in status_line(app)
            await send(pilot, "Who goes there?")
            assert speakers(app) == ["you", "falstaff"], notifications(app)
        messages = library.get_messages(app.session.conversation_id)
        assert [(m.role, m.persona) for m in messages] == [
            ("user", None),
            ("assistant", "falstaff"),
        ]
    finally:
        library.close()
