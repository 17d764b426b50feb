"""The real `persona chat --server URL` in a real terminal (tmux), against a real `persona serve`
with its own library (the tiny model, personas falstaff and juliet): switch to falstaff and ask,
switch to juliet and ask again, quit; `persona history` in the chat's own library shows both
replies under the personas that wrote them."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serving import API_KEY, serving_home, tiny_server
from tests.tui.test_chat_tmux import BIN, Terminal, ask, flat

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


@pytest.fixture
def server(tmp_path: Path, tiny: Any, tiny_model_dir: Path) -> Iterator[Any]:
    running = tiny_server(serving_home(tmp_path / "server", tiny.fingerprint), tiny_model_dir)
    yield running
    running.stop()


@pytest.fixture
def client_home(tmp_path: Path) -> Path:
    home = tmp_path / "client"
    home.mkdir()
    return home


@pytest.fixture
def terminal(server: Any, client_home: Path) -> Iterator[Terminal]:
    command = (
        f"{shlex.quote(str(BIN))} chat --server {shlex.quote(server.url)} "
        "--temperature 0 --max-tokens 12"
    )
    env = {
        "PERSONA_HOME": str(client_home),
        "PERSONA_API_KEY": API_KEY,
        "PERSONA_NO_STARTERS": "1",
        "TERM": "xterm-256color",
    }
    term = Terminal(command, env)
    yield term
    term.close()


def test_chat_with_a_servers_personas_and_find_both_replies_in_the_local_history(
    terminal: Terminal, client_home: Path, server: Any
) -> None:
    terminal.wait_for(lambda s: "Say something to" in s, "the chat screen", 120)
    assert server.url in flat(terminal.screen())  # the status line names the server

    terminal.type("/persona falstaff")
    terminal.wait_for(lambda s: "persona: falstaff" in s, "the status line to show falstaff", 30)
    first = ask(terminal, client_home, "What is the capital of France?", 1)

    terminal.type("/persona juliet")
    terminal.wait_for(lambda s: "persona: juliet" in s, "the status line to show juliet", 30)
    second = ask(terminal, client_home, "Who are you?", 2)

    terminal.key("C-q")
    ended = terminal.wait_for(lambda s: "EXIT=" in s, "persona chat to exit", 60)
    assert "EXIT=0" in ended and "Traceback" not in ended
    conversation_id = re.search(r"persona chat --resume (\d+)", flat(ended)).group(1)

    history = subprocess.run(
        [str(BIN), "history", conversation_id, "--json"],
        env={**os.environ, "PERSONA_HOME": str(client_home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert history.returncode == 0, history.stderr
    said = [(m["role"], m["persona"], m["content"]) for m in json.loads(history.stdout)]
    assert said == [
        ("user", None, "What is the capital of France?"),
        ("assistant", "falstaff", first),
        ("user", None, "Who are you?"),
        ("assistant", "juliet", second),
    ]
