"""A chat whose terminal goes away ends: the real `persona chat` on a pseudo-terminal, under a
parent that, like make, catches SIGHUP and waits for its children (so the hang-up signal never
reaches the chat), is hung up by closing the terminal's master side. It must exit within seconds,
with what was typed saved in the library."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux pseudo-terminals")

# the parent: catches SIGHUP as GNU make does (it then waits for its children) and runs the chat
# in its own process group, as `make chat` does
MAKE_LIKE = (
    "import signal, subprocess, sys\n"
    "signal.signal(signal.SIGHUP, lambda *_: None)\n"
    "sys.exit(subprocess.call(sys.argv[1:]))\n"
)
# no parent: the chat is the session leader, and the kernel sends it SIGHUP
DIRECT = "import os, sys\nos.execv(sys.argv[1], sys.argv[1:])\n"
EXIT_WITHIN_S = 10.0


class HungUpTerminal:
    """A 120×40 pseudo-terminal running `argv` under `parent` (MAKE_LIKE or DIRECT), its session
    leader."""

    def __init__(self, argv: list[str], env: dict[str, str], parent: str) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: the terminal's session leader
            try:
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
                os.execve(sys.executable, [sys.executable, "-c", parent, *argv], env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.output = bytearray()
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:  # the terminal's screen output, read so that the chat never blocks
        while not self._stop.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if ready:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:
                    return
                if not data:
                    return
                self.output += data

    def wait_for(self, text: bytes, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert time.monotonic() < deadline, (
                f"{text!r} never came: {bytes(self.output[-2000:])!r}"
            )
            assert self.exit_code() is None, bytes(self.output[-2000:])
            time.sleep(0.05)

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def hang_up(self) -> None:
        self._stop.set()
        self._reader.join(timeout=5)
        os.close(self.fd)

    def exit_code(self) -> int | None:
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            return None
        self.status = status
        return os.waitstatus_to_exitcode(status)

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)  # the parent and the chat: one process group
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def saved_messages(home: Path) -> list[Any]:
    from persona.library import open_library

    library = open_library(home / "library.db")
    try:
        conversations = library.list_conversations()
        return library.get_messages(conversations[0].id) if conversations else []
    finally:
        library.close()


@pytest.mark.parametrize("parent", [MAKE_LIKE, DIRECT], ids=["under-make", "alone"])
def test_a_hung_up_terminal_ends_the_chat_with_the_conversation_saved(
    parent: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    env = {
        **os.environ,
        "PERSONA_HOME": str(home),
        "PERSONA_NO_STARTERS": "1",
        "TERM": "xterm-256color",
    }
    argv = [sys.executable, "-m", "persona", "chat", "--model", str(tiny_model_dir)]
    terminal = HungUpTerminal([*argv, "--temperature", "0", "--max-tokens", "200"], env, parent)
    try:
        terminal.wait_for(b"F2 picks a persona", timeout=120)
        terminal.type("hello there\r")
        deadline = time.monotonic() + 60
        while not saved_messages(home):
            assert time.monotonic() < deadline, bytes(terminal.output[-2000:])
            time.sleep(0.05)
        terminal.hang_up()  # perhaps mid-reply: a 200-token reply takes a while
        hung_up = time.monotonic()
        while (code := terminal.exit_code()) is None:
            assert time.monotonic() - hung_up < EXIT_WITHIN_S, "the chat outlived its terminal"
            time.sleep(0.05)
        assert code == 128 + signal.SIGHUP  # it ended because of the hang-up, not of an error
    finally:
        terminal.kill()
    said = [(m.role, m.content) for m in saved_messages(home)]
    assert said[0] == ("user", "hello there")
    assert len(said) <= 2  # and the reply, as far as it got, when it had begun
