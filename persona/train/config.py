"""`TrainConfig`: every knob of prompt tuning, with defaults that train in minutes on a laptop CPU."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from persona.dialogue.encode import DEFAULT_MAX_LENGTH, DEFAULT_MAX_REPLY_TOKENS
from persona.dialogue.examples import DEFAULT_CONTEXT_TURNS
from persona.dialogue.split import DEFAULT_VALIDATION_FRACTION
from persona.errors import ConfigError
from persona.prompt.deep import KINDS
from persona.prompt.init import INIT_CHOICES

DEFAULT_STEPS = (
    60  # batch 8: ~500 replies seen; enough to beat both baselines on a few hundred lines
)
MAX_VIRTUAL_TOKENS = 512
# a part of a step on a CPU holds at most this many (padded) tokens: activations kept for the
# backward pass cost about 1 MB a token on the default model, so one 212-token row is 0.2 GB
CPU_PART_TOKENS = 256
# each kind's learning rate where --lr is not given, picked by validation NLL (docs/methods.md)
DEFAULT_LR = {"soft": 0.03, "deep": 0.02}
SCHEDULES = ("constant", "cosine")
WARMUP_FRACTION = 0.1  # of the steps, for the cosine schedule
FINAL_LR_FRACTION = 0.1  # the cosine schedule ends at this share of --lr


@dataclass
class TrainConfig:
    num_virtual_tokens: int = 20
    steps: int | None = None  # exclusive with epochs; neither means DEFAULT_STEPS
    epochs: float | None = None
    # deep: keys and values at every layer, better on every measure of docs/methods.md but run by
    # persona's own backend only | soft: input-layer embeddings, which every backend runs
    kind: str = "deep"
    lr: float | None = None  # None: the kind's DEFAULT_LR
    batch_size: int = 8
    # rows through the model at once within a step (0: the whole batch; None: on a CPU as many as
    # keep rows x length within CPU_PART_TOKENS, at least one, on an accelerator the whole batch);
    # the gradient is the batch's either way, up to float rounding
    micro_batch_size: int | None = None
    seed: int = 0
    init: str = "auto"  # text (from --description) | vocab | random; auto = text when described
    context_turns: int = DEFAULT_CONTEXT_TURNS
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION
    max_length: int = DEFAULT_MAX_LENGTH  # tokens after the soft prompt
    max_reply_tokens: int = DEFAULT_MAX_REPLY_TOKENS
    eval_every: int = 0  # steps between validation losses on the progress bar; 0 = about 4 per run
    weight_decay: float = 0.0
    # the description is the system message in training and then in chat (SoftPrompt.system): it
    # carries who the persona is, the soft prompt how it speaks (docs/methods.md measured it);
    # no effect without a description
    description_as_system: bool = True
    # each written example exchange (a spec's `examples`) joins the training examples this often
    example_repeats: int = 4
    # the learning rate over the run: constant, or cosine (a 10% linear warm-up, then down to a
    # tenth of --lr at the last step)
    schedule: str = "constant"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"--kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.lr is None:
            self.lr = DEFAULT_LR[self.kind]
        _int_at_least(
            "num_virtual_tokens", "--virtual-tokens", self.num_virtual_tokens, 1, MAX_VIRTUAL_TOKENS
        )
        if self.steps is not None and self.epochs is not None:
            raise ConfigError(
                f"give --steps or --epochs, not both (got --steps {self.steps} and --epochs {self.epochs})"
            )
        if self.steps is not None:
            _int_at_least("steps", "--steps", self.steps, 1)
        if self.epochs is not None and not (_finite(self.epochs) and self.epochs > 0):
            raise ConfigError(f"--epochs must be a positive number, got {self.epochs!r}")
        if not (_finite(self.lr) and 0 < self.lr <= 10):
            raise ConfigError(
                f"--lr must be a positive learning rate such as 0.01, got {self.lr!r}"
            )
        _int_at_least("batch_size", "--batch-size", self.batch_size, 1, 4096)
        if self.micro_batch_size is not None:
            _int_at_least("micro_batch_size", "--micro-batch", self.micro_batch_size, 0, 4096)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"--seed must be a non-negative integer, got {self.seed!r}")
        if self.init not in INIT_CHOICES:
            raise ConfigError(f"--init must be one of {', '.join(INIT_CHOICES)}, got {self.init!r}")
        _int_at_least("context_turns", "--context-turns", self.context_turns, 0)
        if not (_finite(self.validation_fraction) and 0 <= self.validation_fraction < 1):
            raise ConfigError(
                f"--validation-fraction must be in [0, 1), got {self.validation_fraction!r}"
            )
        _int_at_least("max_length", "--max-length", self.max_length, 16)
        _int_at_least("max_reply_tokens", "--max-reply-tokens", self.max_reply_tokens, 1)
        _int_at_least("eval_every", "--eval-every", self.eval_every, 0)
        if not (_finite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"--weight-decay must be 0 or more, got {self.weight_decay!r}")
        _int_at_least("example_repeats", "example_repeats", self.example_repeats, 1, 1000)
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )
        if not isinstance(self.description_as_system, bool):
            raise ConfigError(
                f"description_as_system must be true or false, got {self.description_as_system!r}"
            )

    def total_steps(self, num_train_examples: int) -> int:
        """Optimiser steps for this run: --steps, or --epochs over the training examples."""
        if self.epochs is not None:
            per_epoch = math.ceil(num_train_examples / self.batch_size)
            return max(1, math.ceil(self.epochs * per_epoch))
        return self.steps if self.steps is not None else DEFAULT_STEPS

    def step_lr(self, step: int, total_steps: int) -> float:
        """The learning rate of optimiser step `step` (0-based) of `total_steps`."""
        assert self.lr is not None  # set in __post_init__
        if self.schedule == "constant" or total_steps <= 1:
            return self.lr
        warmup = max(1, round(WARMUP_FRACTION * total_steps))
        if step < warmup:
            return self.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - 1 - warmup)  # 0 .. 1
        floor = FINAL_LR_FRACTION * self.lr
        return floor + (self.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    def parts(self, device_type: str) -> tuple[int, int]:
        """How a step's rows go through the model on a device of this type: (rows at most per
        part, 0 for any; tokens at most per part, rows x the longest, 0 for any)."""
        if self.micro_batch_size is not None:
            return self.micro_batch_size, 0
        return (0, CPU_PART_TOKENS) if device_type == "cpu" else (0, 0)

    def validation_interval(self, total_steps: int) -> int:
        return self.eval_every or max(1, math.ceil(total_steps / 4))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int_at_least(field: str, flag: str, value: Any, low: int, high: int | None = None) -> None:
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value < low
        or (high is not None and value > high)
    ):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ConfigError(f"{flag} ({field}) must be an integer {bound}, got {value!r}")
