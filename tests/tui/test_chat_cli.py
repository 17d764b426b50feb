"""`persona chat` refuses bad input in one line, before any screen is drawn (no traceback)."""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest

from persona.cli import chat_cmd
from persona.cli.main import main

Size = namedtuple("Size", "columns lines")


@pytest.fixture
def a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend stdin/stdout are a 100×30 terminal, so the checks after that one are reached."""
    monkeypatch.setattr(chat_cmd, "check_terminal", lambda: None)


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.replace(
        "persona: loading the model…\n", ""
    )  # progress, not an error
    assert err.startswith("persona: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_unknown_persona(a_terminal: None, capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line_error(capsys, ["chat", "--persona", "nobody"])
    assert "nobody" in err


def test_unknown_conversation(a_terminal: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert "no conversation with id 42" in one_line_error(capsys, ["chat", "--resume", "42"])


def test_resume_with_nothing_saved(a_terminal: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert "no saved conversation to resume" in one_line_error(capsys, ["chat", "--resume"])


def test_model_that_does_not_load(
    a_terminal: None, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert "does not exist" in one_line_error(
        capsys, ["chat", "--model", str(tmp_path / "missing")]
    )


def test_library_that_is_not_a_library(
    a_terminal: None, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    one_line_error(capsys, ["chat", "--library", str(junk)])
    assert junk.read_bytes() == b"this is not a database" * 100  # left untouched


def test_bad_generation_flag(a_terminal: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert "temperature=-2.0" in one_line_error(capsys, ["chat", "--temperature", "-2"])


def test_no_terminal(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert "needs an interactive terminal" in one_line_error(capsys, ["chat"])


def test_terminal_too_small(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    monkeypatch.setattr(chat_cmd.shutil, "get_terminal_size", lambda: Size(30, 8))
    assert "30×8; make it at least 40×12" in one_line_error(capsys, ["chat"])


def test_bad_resume_id_is_an_argument_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["chat", "--resume", "yesterday"])
    assert "'yesterday' is not a conversation id" in capsys.readouterr().err


def test_chat_command_module_is_light() -> None:
    """`persona --help` must stay fast: registering chat imports neither torch nor textual."""
    import subprocess
    import sys

    code = "import sys, persona.cli.main as m; m.build_parser(); print(sorted(k for k in ('torch', 'textual', 'transformers') if k in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    ).stdout
    assert out.strip() == "[]"


def test_only_the_flags_given_override_the_persona_s_defaults(
    a_terminal: None,
    two_personas: Any,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from persona.tui.app import PersonaChatApp

    two_personas.set_defaults("pirate", {"temperature": 1.2, "max_new_tokens": 40})
    started: list[PersonaChatApp] = []
    monkeypatch.setattr(PersonaChatApp, "run", lambda app: started.append(app))
    argv = ["chat", "--model", str(tiny_model_dir), "--precision", "fp32", "--persona", "pirate"]
    assert main([*argv, "--top-p", "0.5"]) == 0
    (app,) = started
    assert app.overrides == {"top_p": 0.5}
    config = app.config
    assert (config.temperature, config.top_p, config.max_new_tokens) == (1.2, 0.5, 40)


def test_a_server_that_is_down(a_terminal: None, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{free.getsockname()[1]}/v1"
    err = one_line_error(capsys, ["chat", "--server", url])
    assert f"cannot reach the server at {url}" in err


def test_a_server_address_that_is_not_one(
    a_terminal: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "not a server's address" in one_line_error(capsys, ["chat", "--server", "ftp://x"])


def test_a_remote_chat_never_imports_torch(tmp_path: Path) -> None:
    """Everything `persona chat --server` runs, up to a server that is down, and the chat app."""
    import os
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from persona.cli import chat_cmd\n"
        "chat_cmd.check_terminal = lambda: None\n"
        "from persona.cli.main import main\n"
        "code = main(['chat', '--server', 'http://127.0.0.1:9/v1'])\n"
        "import persona.tui.app, persona.tui.backend\n"
        "print(code, sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    env = {**os.environ, "PERSONA_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.stdout.strip() == "1 []", done.stdout + done.stderr
    assert "cannot reach the server" in done.stderr
