"""The real `persona chat` in a real terminal (tmux) on the real default model.

Ask, see the answer stream in, switch persona with /persona, ask again, quit; then both replies
are in `persona history ID --json`, each with the persona that wrote it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (apt-get install tmux)"),
]

PERSONAS = {
    "pirate": "A pirate captain who talks about ships, the sea and treasure.",
    "butler": "A very formal English butler who answers with great dignity.",
}
BIN = Path(sys.executable).parent / "persona"


class Terminal:
    """One tmux server of our own (its own socket), running one command in a 120×40 window."""

    def __init__(self, command: str, env: dict[str, str]) -> None:
        self.socket = f"persona-test-{os.getpid()}-{time.monotonic_ns()}"
        exports = " ".join(f"{key}={shlex.quote(value)}" for key, value in env.items())
        script = f"env {exports} {command}; echo EXIT=$?; sleep 600"
        self._tmux("new-session", "-d", "-s", "chat", "-x", "120", "-y", "40", script)

    def _tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "chat")

    def type(self, text: str) -> None:
        self._tmux("send-keys", "-t", "chat", "-l", text)
        self._tmux("send-keys", "-t", "chat", "Enter")

    def key(self, name: str) -> None:
        self._tmux("send-keys", "-t", "chat", name)

    def wait_for(self, check: Callable[[str], Any], what: str, timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if check(screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; the screen was:\n{screen}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30)


@pytest.fixture
def home_with_personas(real_home: Path) -> Path:
    """The real model plus two personas whose soft prompts start from their descriptions' embeddings."""
    from persona.library import open_library
    from persona.model.loader import load_model
    from persona.prompt.init import initial_prompt
    from persona.prompt.softprompt import SoftPrompt

    loaded = load_model(None)
    library = open_library()
    for name, description in PERSONAS.items():
        embeddings, init = initial_prompt(
            loaded.model, loaded.tokenizer, 16, description=description
        )  # (16, 576)
        prompt = SoftPrompt(
            embeddings,
            name=name,
            description=description,
            fingerprint=loaded.fingerprint,
            init=init,
        )
        library.add_version(name, prompt, model_id=loaded.model_id)
    library.close()
    return real_home


@pytest.fixture
def terminal(home_with_personas: Path) -> Iterator[Terminal]:
    command = f"{shlex.quote(str(BIN))} chat --persona pirate --temperature 0 --max-tokens 24"
    term = Terminal(command, {"PERSONA_HOME": str(home_with_personas), "TERM": "xterm-256color"})
    yield term
    term.close()


def replies(home: Path) -> list[Any]:
    from persona.library import open_library

    library = open_library(home / "library.db")
    try:
        conversations = library.list_conversations()
        messages = library.get_messages(conversations[0].id) if conversations else []
        return [m for m in messages if m.role == "assistant"]
    finally:
        library.close()


def flat(screen: str) -> str:
    """Screen text with the bubbles' bars and the line wrapping taken out."""
    return " ".join(re.sub(r"[█▊▎▌▐│]", " ", screen).split())


def words(text: str, count: int = 4) -> list[str]:
    return re.findall(r"[A-Za-z0-9']+", text)[:count]


def ask(terminal: Terminal, home: Path, question: str, number: int) -> str:
    """Send `question`, wait until reply `number` is saved and shown on screen; return its text.

    (That pieces appear while a reply is still being written is checked, without timing, by the
    Pilot tests; here the real binary has to get the whole answer onto the screen.)
    """
    terminal.type(question)
    deadline = time.monotonic() + 400
    while len(replies(home)) < number:
        assert time.monotonic() < deadline, f"reply {number} never arrived:\n{terminal.screen()}"
        time.sleep(0.2)
    reply = replies(home)[number - 1]
    terminal.wait_for(
        lambda s: all(w in flat(s) for w in words(reply.content)), f"reply {number} on screen", 30
    )
    return reply.content


def test_chat_switch_persona_and_find_both_replies_in_history(
    terminal: Terminal, home_with_personas: Path
) -> None:
    home = home_with_personas
    terminal.wait_for(lambda s: "Say something to pirate" in s, "the chat screen", 300)

    first = ask(terminal, home, "What is the capital of France?", 1)
    assert first.strip()
    screen = flat(terminal.screen())
    assert "you What is the capital of France?" in screen and "pirate" in screen

    terminal.type("/persona butler")
    terminal.wait_for(lambda s: "persona: butler" in s, "the status line to show butler", 30)
    second = ask(terminal, home, "Who are you?", 2)

    screen = terminal.screen()
    assert "pirate" in screen and "butler" in screen  # each reply labelled with its speaker
    terminal.key("C-q")
    ended = terminal.wait_for(lambda s: "EXIT=" in s, "persona chat to exit", 60)
    assert "EXIT=0" in ended and "Traceback" not in ended
    conversation_id = re.search(r"persona chat --resume (\d+)", flat(ended)).group(1)

    history = subprocess.run(
        [str(BIN), "history", conversation_id, "--json"],
        env={**os.environ, "PERSONA_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert history.returncode == 0, history.stderr
    messages = json.loads(history.stdout)
    said = [(m["role"], m["persona"], m["content"]) for m in messages]
    assert said == [
        ("user", None, "What is the capital of France?"),
        ("assistant", "pirate", first),
        ("user", None, "Who are you?"),
        ("assistant", "butler", second),
    ]
