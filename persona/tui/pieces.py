"""The pieces of a reply on their way from the generating thread to the screen.

The worker never waits for the screen: it pushes each piece into a `PieceBuffer`, and only the
first push after the screen last drained asks for a drain. The screen takes everything gathered
at once and reopens when it can draw again, so a slow redraw coalesces pieces instead of slowing
generation. One buffer serves one reply; `close` hands over the rest when the reply ends.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Drained:
    text: str  # the pieces not shown yet, joined in the order they came
    tokens_per_second: float  # the latest speed the worker reported (0.0: none yet)


class PieceBuffer:
    """Thread-safe: `push` from the worker thread; `take`, `reopen` and `close` from the UI."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pieces: list[str] = []
        self._tokens_per_second = 0.0
        self._drain_asked = False  # a drain request is on its way, or the screen is drawing
        self._closed = False

    def push(self, piece: str, tokens_per_second: float = 0.0) -> bool:
        """Keep `piece`; True when the caller should ask the screen to drain (once per drain)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("a piece came after its reply was closed")
            self._pieces.append(piece)
            self._tokens_per_second = tokens_per_second or self._tokens_per_second
            if self._drain_asked:
                return False
            self._drain_asked = True
            return True

    def take(self) -> Drained:
        """Everything gathered so far; pushes stay quiet until `reopen`."""
        with self._lock:
            return self._drain()

    def reopen(self) -> bool:
        """The screen can draw again: True when pieces are already waiting (ask for a drain now)."""
        with self._lock:
            waiting = bool(self._pieces) and not self._closed
            self._drain_asked = waiting
            return waiting

    def close(self) -> Drained:
        """The reply is over: the rest of it; later takes are empty and pushes are refused."""
        with self._lock:
            self._closed = True
            return self._drain()

    def _drain(self) -> Drained:
        drained = Drained("".join(self._pieces), self._tokens_per_second)
        self._pieces.clear()
        return drained
