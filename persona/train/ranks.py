"""Data-parallel training: the processes `accelerate launch` starts, and what they share.

`persona train` run under `accelerate launch --num_processes N` is N copies of the same command.
Every copy builds the same examples and the same seeded batch schedule; each takes its share of
every global batch (rows rank, rank+N, ...), so the global batch, the seed and the steps are those
of a single-process run. After the backward pass the prompt's gradient is summed over the
processes (each process divides its summed token NLL by the global batch's reply-token count
before backward, so the sum is the gradient of the single-process mean loss). Rank 0 writes the
checkpoints, the progress bar and the library; the others wait for it at barriers.

Accelerate starts the process group (`PartialState`: gloo on CPU, NCCL on CUDA); the collectives
themselves are torch.distributed's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from persona.errors import ConfigError
from persona.model.device import resolve_device

Item = TypeVar("Item")

LAUNCH_VARIABLE = "WORLD_SIZE"  # set by accelerate launch (torchrun) for every process it starts


@dataclass
class Ranks:
    """This process's place among the training processes; one process is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    state: Any = None  # accelerate's PartialState when launched, else None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def share(self, items: Sequence[Item]) -> list[Item]:
        """This rank's items: every world_size-th one from its rank on (all of them alone)."""
        return list(items[self.rank :: self.world_size])

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over the ranks, in place (one collective)."""
        if self.distributed:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's `tensor` on every rank, in place."""
        if self.distributed:
            torch.distributed.broadcast(tensor, src=0)
        return tensor

    def wait(self) -> None:
        """A barrier: every rank gets here before any goes on."""
        if self.distributed:
            self.state.wait_for_everyone()

    def close(self) -> None:
        if self.distributed:
            self.state.destroy_process_group()


def launched() -> bool:
    """Whether this process is one of several started by accelerate launch (or torchrun)."""
    try:
        return int(os.environ.get(LAUNCH_VARIABLE, "1")) > 1
    except ValueError:
        return False


def start_ranks(device: str = "auto") -> Ranks:
    """The ranks of this run: one process on `device`, or this process's rank under a launch.

    Under a launch, auto and cuda put each process on its own GPU (NCCL); cpu uses gloo.
    """
    if not launched():
        return Ranks(device=resolve_device(device))
    if device == "mps":
        raise ConfigError(
            "--device mps runs one process; data-parallel training runs on CUDA GPUs or the CPU"
        )
    if device != "cpu":
        resolve_device(device)  # a missing CUDA is the same one-line error as without a launch
    from accelerate import PartialState

    on_cpu = device == "cpu" or not torch.cuda.is_available()
    state = PartialState(cpu=on_cpu)
    target = torch.device("cpu") if on_cpu else state.device
    return Ranks(state.process_index, state.num_processes, target, state)
