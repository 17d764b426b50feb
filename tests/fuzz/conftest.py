"""Print how many generated cases each reader was fed (and how many it refused) after a fuzz run."""

from __future__ import annotations

import json
import os

from tests.fuzz.harness import CASES, REFUSED


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    if not CASES:
        return
    write = terminalreporter.write_line
    terminalreporter.section("fuzz cases per reader")
    for reader in sorted(CASES):
        write(
            f"{reader:<28} {CASES[reader]:>6} cases, {REFUSED[reader]:>6} refused with a one-line PersonaError"
        )
    write(f"{'total':<28} {sum(CASES.values()):>6} cases")
    report = os.environ.get("PERSONA_FUZZ_REPORT")
    if report:
        with open(report, "w", encoding="utf-8") as handle:
            json.dump(
                {"cases": dict(CASES), "refused": dict(REFUSED)}, handle, indent=2, sort_keys=True
            )
