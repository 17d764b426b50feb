"""Which thread runs torch's parallel work: a runner's own worker, and no other.

torch's OpenMP keeps a pool of worker threads for each thread that has run parallel work, for as
long as that thread lives; with a second pool beside the generating thread's, every parallel region
of a decode step waits longer for its workers, and a step ran 1.5-2x slower on a 2-core machine
(`benchmarks/threads.py`). So: the model is loaded on a thread that ends
(persona.model.loader.on_passing_thread); a runner that generates on a thread of its own (the batch
scheduler, the serial runner) gives that thread the count its constructor saw (`threads_now`,
then `take` on the worker); and the thread that started it, which serves other things from then on
(a server's HTTP side, the chat's screen), keeps a single thread (`leave_to_workers`), so the torch
work it still does (a persona read, a small tensor) starts no pool of its own.
"""

from __future__ import annotations

import torch


def threads_now() -> int:
    """The calling thread's torch thread count."""
    return torch.get_num_threads()


def take(count: int) -> None:
    """The calling thread (a runner's worker) uses `count` torch threads.

    torch sets a thread's count once, lazily, from the process-wide value (which any thread's
    set_num_threads changes) at the thread's first parallel work; asking for the count first
    makes that happen now, so the count set here is not replaced later by another thread's."""
    torch.get_num_threads()
    torch.set_num_threads(max(1, count))


def leave_to_workers() -> None:
    """The calling thread does no model work from here on: one torch thread, no OpenMP pool."""
    torch.set_num_threads(1)
