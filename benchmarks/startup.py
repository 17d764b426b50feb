"""Start-up of a one-shot reply with the cyclic garbage collector paused (as shipped) and left on.

    python benchmarks/startup.py [--runs 5] [--model PATH]

Runs `persona reply --local --no-persona --max-tokens 1 hi` in fresh processes, alternating the
two cases so that a noisy machine spreads over both, and prints each case's wall and CPU
seconds (CPU time, user and system, is what the collector costs and is less shaken by other
work on the machine). "left on" is the same command with persona.cli.startup.pause made a no-op. What the pause
buys is the difference of the medians; persona.cli.startup keeps it only while that is clearly
positive.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time

CHILD = r"""
import sys
from persona.cli import startup
if sys.argv[1] == "on":
    startup.pause = lambda: None  # the collector stays on through the start
from persona.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def timed(case: str, argv: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one fresh process running `argv` in `case`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", CHILD, case, *argv],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each case")
    parser.add_argument("--model", help="model directory (default: the embedded default)")
    args = parser.parse_args()
    argv = ["reply", "--local", "--no-persona", "--max-tokens", "1", "hi"]
    if args.model:
        argv[1:1] = ["--model", args.model]
    timed("paused", argv)  # warm-up: the page cache, the int8 cache
    times: dict[str, list[tuple[float, float]]] = {"paused": [], "on": []}
    for index in range(args.runs):
        order = ("paused", "on") if index % 2 == 0 else ("on", "paused")
        for case in order:
            times[case].append(timed(case, argv))
    print(f"persona {' '.join(argv)}: a fresh process, {args.runs} runs each, seconds")
    medians = {}
    for case, label in (("paused", "collector paused"), ("on", "collector left on")):
        walls = [wall for wall, _ in times[case]]
        cpus = [cpu for _, cpu in times[case]]
        medians[case] = (statistics.median(walls), statistics.median(cpus))
        print(
            f"  {label:18s} wall median {medians[case][0]:.2f} min {min(walls):.2f}"
            f"   CPU median {medians[case][1]:.2f} min {min(cpus):.2f}"
        )
    print(
        f"  the pause saves {medians['on'][0] - medians['paused'][0]:.2f} s wall,"
        f" {medians['on'][1] - medians['paused'][1]:.2f} s CPU (medians)"
    )


if __name__ == "__main__":
    main()
