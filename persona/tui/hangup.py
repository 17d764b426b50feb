"""Noticing that the chat's terminal went away (a closed window, a lost SSH connection).

Two signs, either enough: SIGHUP, and the terminal itself reporting a hang-up. The second matters
because SIGHUP does not always arrive: the kernel sends it to the terminal's session leader, and a
leader such as make catches it and waits for its children instead of passing it on. Textual's
input thread then reads end-of-file from the dead terminal over and over, a core at 100%, so the
app must end itself. The watch is one thread blocked in poll(2) (no CPU while the terminal lives);
both signs call `on_hang_up` once, on the app's event loop.
"""

from __future__ import annotations

import asyncio
import select
import signal
import threading
from collections.abc import Callable

POLL_MS = 1000  # how often the watching thread looks whether it should stop


class HangUpWatch:
    def __init__(self, on_hang_up: Callable[[], object], fd: int = 0) -> None:
        self.on_hang_up = on_hang_up
        self.fd = fd  # the terminal: stdin
        self._fired = threading.Event()
        self._stopped = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Watch from now on; call from the event loop's thread (the main one, for the signal)."""
        self._loop = loop
        loop.add_signal_handler(signal.SIGHUP, self._fire)
        threading.Thread(target=self._watch, name="persona-hangup", daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_signal_handler(signal.SIGHUP)

    def _watch(self) -> None:
        poller = select.poll()
        poller.register(self.fd, 0)  # no events asked for: poll reports only hang-ups and errors
        while not self._stopped.is_set():
            if poller.poll(POLL_MS):
                self._fire()
                return

    def _fire(self) -> None:
        if self._fired.is_set() or self._loop is None:
            return
        self._fired.set()
        try:
            self._loop.call_soon_threadsafe(self.on_hang_up)
        except RuntimeError:  # the loop has closed: the app is gone already
            pass
