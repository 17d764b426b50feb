"""What `GET /metrics` reports, in Prometheus' text format (a few lines, formatted by hand)."""

from __future__ import annotations

from collections import Counter

from persona.engine.rate import RATE_WINDOW_S


class RequestCounter:
    """HTTP requests answered, by status code (touched on the event loop only)."""

    def __init__(self) -> None:
        self.by_status: Counter[int] = Counter()

    def count(self, status: int) -> None:
        self.by_status[status] += 1


# scheduler metric -> (Prometheus name, type, help)
SCHEDULER_SERIES = {
    "queue_depth": ("persona_queue_depth", "gauge", "Requests waiting for a free row."),
    "active_rows": ("persona_active_rows", "gauge", "Replies being generated now."),
    "tokens_total": ("persona_generated_tokens_total", "counter", "Tokens generated."),
    "tokens_per_second": (
        "persona_tokens_per_second",
        "gauge",
        f"Tokens generated per second over the last {RATE_WINDOW_S:g} s.",
    ),
}


def prometheus_text(scheduler: dict[str, float], requests: RequestCounter) -> str:
    """The exposition text: the scheduler's series, then requests by status."""
    lines: list[str] = []
    for key, (name, kind, help_text) in SCHEDULER_SERIES.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        lines.append(f"{name} {_number(scheduler.get(key, 0.0))}")
    name = "persona_requests_total"
    lines += [f"# HELP {name} HTTP requests answered, by status.", f"# TYPE {name} counter"]
    for status, count in sorted(requests.by_status.items()):
        lines.append(f'{name}{{status="{status}"}} {count}')
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"
