"""Stop strings: cut a streamed reply before the first stop string, without ever sending part of it.

Text arrives in pieces, and a stop string can straddle two of them ("Hel" + "lo" for "Hello"), so
the tail of the text that could still become a stop string is held back until the next piece
decides it. One `StopScanner` per reply: every server scheduler feeds its pieces through one, and
so do `persona reply` and the chat client, so a persona's stop strings cut alike everywhere.
"""

from __future__ import annotations


class StopScanner:
    """Feed pieces with `push`; what it returns is safe to send. `flush` releases the held tail."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [stop for stop in stops if stop]
        self.stopped = False  # a stop string was found: nothing more is sent
        self._held = ""

    def push(self, piece: str) -> str:
        """The text of `piece` (and of any held tail) that is sure to come before a stop string."""
        if self.stopped:
            return ""
        text = self._held + piece
        if not self.stops:
            return text
        cut = min((index for stop in self.stops if (index := text.find(stop)) >= 0), default=-1)
        if cut >= 0:
            self.stopped, self._held = True, ""
            return text[:cut]
        keep = self._partial_tail(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """The held tail, once the reply has ended without completing a stop string."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _partial_tail(self, text: str) -> int:
        """Length of the longest end of `text` that is the start of some stop string."""
        longest = 0
        for stop in self.stops:
            for length in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:length]):
                    longest = length
                    break
        return longest
