"""What every fuzz case must end in: success, or a PersonaError with a one-line message; never a hang.

`check(fn)` runs one case under a wall-clock alarm (a hang is a failure, not a stuck CI job);
`fuzz_settings(n)` scales every reader's case count by $PERSONA_FUZZ_SCALE (default 1); the counts
actually run are recorded per reader and printed at the end of the session (see conftest.py).
"""

from __future__ import annotations

import os
import signal
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, settings

from persona.errors import PersonaError

CASES: Counter[str] = Counter()  # reader -> cases run
REFUSED: Counter[str] = Counter()  # reader -> cases that ended in a PersonaError
HANG_SECONDS = 30.0  # one case of a bounded reader takes milliseconds; this is a hang


class Hang(BaseException):
    """Raised by the alarm; a BaseException so no `except Exception` in the code under test hides it."""


@contextmanager
def alarm(seconds: float = HANG_SECONDS) -> Iterator[None]:
    def ring(signum: int, frame: Any) -> None:
        raise Hang(f"a single case ran for more than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check(reader: str, function: Callable[[], Any]) -> Any:
    """Run one case: return its result, or None when it was refused with a clean one-line PersonaError."""
    CASES[reader] += 1
    try:
        with alarm():
            return function()
    except PersonaError as exc:
        REFUSED[reader] += 1
        assert_one_line(str(exc))
        return None


def assert_one_line(message: str) -> None:
    assert message.strip(), "a PersonaError with an empty message"
    assert len(message.splitlines()) == 1, f"a multi-line error message: {message!r}"
    assert not any(unicodedata.category(c) == "Cc" for c in message), (
        f"control characters in an error message: {message!r}"
    )
    assert "Traceback" not in message, f"a traceback inside an error message: {message!r}"


def scale() -> float:
    return float(os.environ.get("PERSONA_FUZZ_SCALE", "1"))


def fuzz_settings(max_examples: int, deadline_s: float = 10.0) -> settings:
    """Derandomized by default, so CI is reproducible; PERSONA_FUZZ_RANDOM=1 explores new cases."""
    return settings(
        max_examples=max(1, int(max_examples * scale())),
        deadline=timedelta(
            seconds=deadline_s
        ),  # generous: the machine is shared; hangs are caught by `alarm`
        derandomize=not os.environ.get("PERSONA_FUZZ_RANDOM"),
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
            HealthCheck.filter_too_much,
        ],
        print_blob=True,
    )
