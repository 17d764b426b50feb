"""The prompt-tuning loop: AdamW on the (N, D) prompt alone, length-bucketed batches, a progress bar,
and Ctrl-C that finishes the current step, saves a checkpoint and stops (`--resume` continues).
Under a data-parallel launch each rank runs its share of every batch (see persona.train.ranks).

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
from persona.model.device import model_device
from persona.prompt.deep import KVLayout
from persona.train.batching import collate, reply_tokens, schedule
from persona.train.checkpoint import Checkpoint, save_checkpoint
from persona.train.config import TrainConfig
from persona.train.evaluate import mean_nll
from persona.train.loss import labelled_nll
from persona.train.ranks import Ranks

# Under accelerate launch a Ctrl-C reaches each process twice: from the terminal, and from the
# launcher passing it on to its workers a moment later. Within this many seconds it is one Ctrl-C.
REPEATED_SIGNAL_SECONDS = 2.0


class _StopNow(KeyboardInterrupt):
    """A second Ctrl-C: stop at once, without waiting for the other ranks."""


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
    ranks: Ranks | None = None,
    layout: KVLayout | None = None,
) -> LoopResult:
    """Optimise the prompt for `total_steps` steps; only the prompt ever requires grad.

    The prompt and AdamW's state stay float32 on the model's device whatever the weights' dtype;
    under a data-parallel launch (`ranks`) every rank runs this with the same arguments.
    `layout`: the prompt is a deep one (N, W), keys and values for a KV cache of this layout.
    """
    ranks = ranks or Ranks()
    device = model_device(model)
    prompt = torch.nn.Parameter(
        initial.detach().to(device=device, dtype=torch.float32).clone()
    )  # (N, D)
    assert config.lr is not None  # TrainConfig.__post_init__ puts the kind's default there
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
    ranks.broadcast(prompt.data)  # every rank starts from rank 0's prompt, bit for bit
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
        disable=not (progress and ranks.is_main),
        dynamic_ncols=True,
    )
    started = time.perf_counter() - state.seconds
    echo = REPEATED_SIGNAL_SECONDS if ranks.distributed else 0.0
    with _deferred_interrupt(bar, echo) as interrupt:
        try:
            while state.step < total_steps:
                step_started = time.perf_counter()
                for group in optimizer.param_groups:  # from the step alone: a resume needs no state
                    group["lr"] = config.step_lr(state.step, total_steps)
                examples = [train[i] for i in batches[state.step]]  # the global batch
                loss, stop = _step(
                    model,
                    prompt,
                    optimizer,
                    examples,
                    pad_id,
                    ranks,
                    interrupt.is_set(),
                    layout,
                    config.parts(device.type),
                )
                if not ranks.distributed:  # alone, a Ctrl-C during the step counts at once
                    stop = interrupt.is_set()
                state.train_seconds += time.perf_counter() - step_started
                state.step += 1
                state.tokens += sum(len(e.input_ids) for e in examples)
                record = {"step": state.step, "loss": loss}
                if validation and (state.step % interval == 0 or state.step == total_steps):
                    record["val_loss"], _ = mean_nll(
                        model,
                        prompt.detach(),
                        validation,
                        pad_id=pad_id,
                        batch_size=config.batch_size,
                        ranks=ranks,
                        layout=layout,
                    )
                state.history.append(record)
                state.seconds = time.perf_counter() - started
                _show(bar, state)
                if (
                    checkpoint_file is not None
                    and ranks.is_main
                    and state.step % interval == 0
                    and state.step < total_steps
                ):
                    save_checkpoint(
                        checkpoint_file, _snapshot(prompt, optimizer, state, identity or {})
                    )
                if on_step is not None:
                    on_step(state.step, record["loss"])
                if stop and state.step < total_steps:
                    raise KeyboardInterrupt
        except KeyboardInterrupt as stopped:
            bar.close()
            if checkpoint_file is None:
                raise
            state.seconds = time.perf_counter() - started
            if ranks.is_main:
                save_checkpoint(
                    checkpoint_file, _snapshot(prompt, optimizer, state, identity or {})
                )
            if not isinstance(stopped, _StopNow):  # all ranks stop together: wait for the file
                ranks.wait()
            raise TrainingInterrupted(checkpoint_file, state.step, total_steps) from None
    bar.close()
    if (
        checkpoint_file is not None and ranks.is_main
    ):  # kept until the caller has stored the result: a later failure loses nothing
        state.seconds = time.perf_counter() - started
        save_checkpoint(checkpoint_file, _snapshot(prompt, optimizer, state, identity or {}))
    return LoopResult(
        prompt.detach().cpu().clone(),
        state.step,
        state.seconds,
        state.train_seconds,
        state.tokens,
        state.history,
    )


def _step(
    model: Any,
    prompt: torch.nn.Parameter,  # (N, D) float32
    optimizer: torch.optim.Optimizer,
    examples: Sequence[EncodedExample],  # the global batch
    pad_id: int,
    ranks: Ranks,
    stop_requested: bool,
    layout: KVLayout | None = None,
    parts: tuple[int, int] = (0, 0),
) -> tuple[float, bool]:
    """One optimiser step on the global batch: (its mean NLL per reply token, whether any rank was
    asked to stop). The loss and the stop flag travel with the gradient: one collective, one
    read-back to the host per step. A rank's rows go through the model in `parts` (rows, tokens
    at most: micro_batches), each part's activations let go after its backward pass: the same
    gradient up to float rounding, in a fraction of the memory."""
    optimizer.zero_grad(set_to_none=True)
    count = max(reply_tokens(examples), 1)  # the global batch's, known to every rank
    mine = ranks.share(examples)
    if mine:
        loss = prompt.new_zeros(())
        for part in micro_batches(mine, *parts):
            ids, mask, labels = (
                tensor.to(prompt.device, non_blocking=True) for tensor in collate(part, pad_id)
            )  # (b, T) each: these rows, moved once
            total, _ = labelled_nll(
                model, prompt, ids, mask, labels, layout=layout
            )  # () summed NLL of the rows
            part_loss = total / count  # () this part's share of the global mean
            part_loss.backward()  # the gradient adds up in prompt.grad; the activations go
            loss = loss + part_loss.detach()
    else:  # a global batch smaller than the world: this rank adds nothing
        loss = prompt.new_zeros(())
        prompt.grad = torch.zeros_like(prompt)
    if ranks.distributed:
        assert prompt.grad is not None  # backward() ran, or the zeros above
        flat = torch.cat(
            [
                prompt.grad.flatten(),
                loss.detach().reshape(1),
                prompt.new_tensor([1.0 if stop_requested else 0.0]),
            ]
        )  # (N*D + 2,)
        ranks.sum(flat)
        prompt.grad.copy_(flat[:-2].view_as(prompt))  # (N, D) the gradient of the global mean
        loss_value, stops = flat[-2:].tolist()
        stop_requested = stops > 0
    else:
        loss_value = float(loss.detach())
    optimizer.step()
    return loss_value, stop_requested


def micro_batches(
    examples: Sequence[EncodedExample], rows: int = 0, tokens: int = 0
) -> list[Sequence[EncodedExample]]:
    """`examples` in parts, the longest first and together, so that the short ones are not padded
    to them: at most `rows` a part (0: any number), and at most `tokens` in a part counted as its
    rows times its longest (0: any number; a row longer than that is a part of its own)."""
    if tokens <= 0 and (rows <= 0 or rows >= len(examples)):
        return [examples]  # one part, in the batch's own order
    ordered = sorted(examples, key=lambda e: len(e.input_ids), reverse=True)
    parts: list[list[EncodedExample]] = [[]]
    for example in ordered:
        current = parts[-1]
        longest = len(current[0].input_ids) if current else 0
        full = (rows > 0 and len(current) >= rows) or (
            tokens > 0 and current and (len(current) + 1) * longest > tokens
        )
        if full:
            parts.append([])
        parts[-1].append(example)
    return list(parts)


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
    return Checkpoint(  # CPU copies: safetensors writes host memory
        prompt=prompt.detach().cpu().clone(),
        exp_avg=moments.get("exp_avg", zeros).detach().cpu().clone(),
        exp_avg_sq=moments.get("exp_avg_sq", zeros).detach().cpu().clone(),
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
            "exp_avg": checkpoint.exp_avg.to(prompt.device, torch.float32).clone(),  # (N, D)
            "exp_avg_sq": checkpoint.exp_avg_sq.to(prompt.device, torch.float32).clone(),  # (N, D)
        }


@contextmanager
def _deferred_interrupt(bar: Any, echo: float = 0.0) -> Iterator[threading.Event]:
    """The first Ctrl-C lets the running step finish (then the loop saves and stops); a second one stops at once.

    echo: seconds after the first in which another SIGINT is the same Ctrl-C, not a second one.
    """
    requested = threading.Event()
    first: list[float] = []
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def handler(signum: int, frame: Any) -> None:
        if requested.is_set():
            if time.monotonic() - first[0] < echo:
                return
            raise _StopNow
        first.append(time.monotonic())
        requested.set()
        bar.write(
            "persona: finishing this step, then saving a checkpoint (Ctrl-C again to stop at once)"
        )

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield requested
    finally:
        signal.signal(signal.SIGINT, previous)
