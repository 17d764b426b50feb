"""Start-up without the cyclic garbage collector.

Importing torch leaves well over a hundred thousand objects for the collector to track, nearly
all of them living as long as the process. The collector, running while they appear, walks them
again and again: on a 2-core machine that was about a third of a `persona reply` start
(`benchmarks/startup.py` measures the same command with the collector paused and left on). So
`persona` turns it off before it imports anything (`pause`), and each command that loads a model
turns it back on once the model is ready (`ready`), first moving everything made so far out of
its reach (`gc.freeze`), so later collections walk only what the conversation or training
creates. Objects without reference cycles are freed as usual all along.
"""

from __future__ import annotations

import gc


def pause() -> None:
    gc.disable()


def ready() -> None:
    """The long-lived objects are made: freeze them out of the collector's way and turn it back on."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def collect_dropped() -> None:
    """Collect what was let go of among the objects `ready` froze (a model dropped for another):
    frozen objects are never collected, and a model's modules hold reference cycles."""
    gc.unfreeze()
    gc.collect()


def resume() -> None:
    """Back to normal without freezing (a command that ends, or never loads a model)."""
    gc.enable()
