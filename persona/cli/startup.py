"""Start-up without the cyclic garbage collector.

Importing torch leaves about 250,000 objects for the collector to track, nearly all of them
living as long as the process, and one full collection over them takes about 0.25 s on a 2-core
machine. The collector, running while they appear, walks them again and again: 0.3 to 1.0 s of a
`persona reply` start there (measured with the collector off against on, same command). So
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


def resume() -> None:
    """Back to normal without freezing (a command that ends, or never loads a model)."""
    gc.enable()
