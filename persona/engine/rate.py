"""Tokens generated: the total and the recent rate, as every runner reports them in `metrics()`."""

from __future__ import annotations

import threading
import time
from collections import deque

RATE_WINDOW_S = 10.0  # tokens/s is measured over this many recent seconds


class TokenRate:
    """Generated tokens: the total, and the rate over the last RATE_WINDOW_S seconds. Thread-safe."""

    def __init__(self) -> None:
        self.total = 0
        self._recent: deque[tuple[float, int]] = deque()  # (monotonic time, tokens)
        self._lock = threading.Lock()

    def add(self, tokens: int) -> None:
        if tokens <= 0:
            return
        with self._lock:
            self.total += tokens
            self._recent.append((time.monotonic(), tokens))

    def per_second(self) -> float:
        with self._lock:
            horizon = time.monotonic() - RATE_WINDOW_S
            while self._recent and self._recent[0][0] < horizon:
                self._recent.popleft()
            return sum(tokens for _, tokens in self._recent) / RATE_WINDOW_S
