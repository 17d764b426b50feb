"""The prompt-tuning loop: AdamW on the (N, D) prompt alone, length-bucketed batches, a progress bar,
and Ctrl-C that finishes the current step, saves a checkpoint and stops (`--resume` continues).

A checkpoint is also written at every validation interval (about four times a run), so a run that
is killed outright (SIGKILL, power loss) resumes from the last one instead of from the start.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from persona.dialogue.encode import EncodedExample
from persona.train.batching import collate, schedule
from persona.train.checkpoint import Checkpoint, save_checkpoint
from persona.train.config import TrainConfig
from persona.train.evaluate import mean_nll
from persona.train.loss import labelled_nll


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: the state after `step` completed steps is in `checkpoint`."""

    def __init__(self, checkpoint: Path, step: int, total: int) -> None:
        super().__init__(f"interrupted after step {step}/{total}")
        self.checkpoint, self.step, self.total = checkpoint, step, total


@dataclass
class LoopResult:
    prompt: torch.Tensor  # (N, D) the trained prompt
    steps: int
    seconds: float  # wall time including validation
    train_seconds: float  # time in optimiser steps only
    tokens: int  # real (unpadded) input tokens trained on, soft prompt excluded
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.train_seconds if self.train_seconds > 0 else 0.0


@dataclass
class LoopState:
    """What the loop carries from step to step; a checkpoint is a snapshot of it."""

    step: int = 0
    seconds: float = 0.0
    train_seconds: float = 0.0
    tokens: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def train_loop(
    model: Any,
    initial: torch.Tensor,  # (N, D) starting prompt
    train: Sequence[EncodedExample],
    validation: Sequence[EncodedExample],
    config: TrainConfig,
    *,
    pad_id: int,
    total_steps: int,
    identity: dict[str, Any] | None = None,
    checkpoint_file: Path | None = None,
    resume_from: Checkpoint | None = None,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    description: str = "training",
    batches: list[list[int]] | None = None,
) -> LoopResult:
    """Optimise the prompt for `total_steps` steps; only the prompt ever requires grad."""
    prompt = torch.nn.Parameter(initial.detach().clone().to(torch.float32))  # (N, D)
    optimizer = torch.optim.AdamW([prompt], lr=config.lr, weight_decay=config.weight_decay)
    state = LoopState()
    if resume_from is not None:
        _restore(prompt, optimizer, resume_from)
        state = LoopState(
            resume_from.step,
            resume_from.seconds,
            resume_from.train_seconds,
            resume_from.tokens,
            list(resume_from.history),
        )
    if batches is None:  # the length-bucketed schedule; benchmarks may pass their own
        batches = schedule(
            [len(e.input_ids) for e in train], config.batch_size, config.seed, total_steps
        )
    interval = config.validation_interval(total_steps)
    bar = tqdm(
        total=total_steps,
        initial=state.step,
        desc=description,
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
    )
    started = time.perf_counter() - state.seconds
    with _deferred_interrupt(bar) as interrupt:
        try:
            while state.step < total_steps:
                step_started = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                ids, mask, labels = collate(
                    [train[i] for i in batches[state.step]], pad_id
                )  # (B, T) each
                total, count = labelled_nll(model, prompt, ids, mask, labels)
                loss = total / max(count, 1)  # () mean NLL per reply token
                loss.backward()
                optimizer.step()
                state.train_seconds += time.perf_counter() - step_started
                state.step += 1
                state.tokens += int(mask.sum())
                record = {"step": state.step, "loss": float(loss.detach())}
                if validation and (state.step % interval == 0 or state.step == total_steps):
                    record["val_loss"], _ = mean_nll(
                        model,
                        prompt.detach(),
                        validation,
                        pad_id=pad_id,
                        batch_size=config.batch_size,
                    )
                state.history.append(record)
                state.seconds = time.perf_counter() - started
                _show(bar, state)
                if (
                    checkpoint_file is not None
                    and state.step % interval == 0
                    and state.step < total_steps
                ):
                    save_checkpoint(
                        checkpoint_file, _snapshot(prompt, optimizer, state, identity or {})
                    )
                if on_step is not None:
                    on_step(state.step, record["loss"])
                if interrupt.is_set() and state.step < total_steps:
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            bar.close()
            if checkpoint_file is None:
                raise
            state.seconds = time.perf_counter() - started
            save_checkpoint(checkpoint_file, _snapshot(prompt, optimizer, state, identity or {}))
            raise TrainingInterrupted(checkpoint_file, state.step, total_steps) from None
    bar.close()
    if (
        checkpoint_file is not None
    ):  # kept until the caller has stored the result: a later failure loses nothing
        state.seconds = time.perf_counter() - started
        save_checkpoint(checkpoint_file, _snapshot(prompt, optimizer, state, identity or {}))
    return LoopResult(
        prompt.detach().clone(),
        state.step,
        state.seconds,
        state.train_seconds,
        state.tokens,
        state.history,
    )


def _show(bar: Any, state: LoopState) -> None:
    postfix = {"loss": f"{state.history[-1]['loss']:.3f}"}
    last_val = next((h["val_loss"] for h in reversed(state.history) if "val_loss" in h), None)
    if last_val is not None:
        postfix["val"] = f"{last_val:.3f}"
    if state.train_seconds > 0:
        postfix["tok/s"] = f"{state.tokens / state.train_seconds:.0f}"
    bar.set_postfix(postfix, refresh=False)
    bar.update(1)


def _snapshot(
    prompt: torch.nn.Parameter,
    optimizer: torch.optim.Optimizer,
    state: LoopState,
    identity: dict[str, Any],
) -> Checkpoint:
    moments = optimizer.state.get(prompt, {})
    zeros = torch.zeros_like(prompt.detach())  # (N, D) before the first step
    return Checkpoint(
        prompt=prompt.detach().clone(),
        exp_avg=moments.get("exp_avg", zeros).detach().clone(),
        exp_avg_sq=moments.get("exp_avg_sq", zeros).detach().clone(),
        adam_step=float(moments.get("step", 0.0)),
        step=state.step,
        identity=identity,
        history=state.history,
        seconds=state.seconds,
        train_seconds=state.train_seconds,
        tokens=state.tokens,
        init=str(identity.get("init", "")),
    )


def _restore(
    prompt: torch.nn.Parameter, optimizer: torch.optim.Optimizer, checkpoint: Checkpoint
) -> None:
    with torch.no_grad():
        prompt.copy_(checkpoint.prompt)
    if checkpoint.adam_step > 0:
        optimizer.state[prompt] = {
            "step": torch.tensor(checkpoint.adam_step, dtype=torch.float32),
            "exp_avg": checkpoint.exp_avg.clone(),  # (N, D)
            "exp_avg_sq": checkpoint.exp_avg_sq.clone(),  # (N, D)
        }


@contextmanager
def _deferred_interrupt(bar: Any) -> Iterator[threading.Event]:
    """The first Ctrl-C lets the running step finish (then the loop saves and stops); a second one stops at once."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def handler(signum: int, frame: Any) -> None:
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()
        bar.write(
            "persona: finishing this step, then saving a checkpoint (Ctrl-C again to stop at once)"
        )

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield requested
    finally:
        signal.signal(signal.SIGINT, previous)
