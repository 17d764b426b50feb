"""`--schedule`: the learning rate over a run, a function of the step alone (so a resume needs no
extra state)."""

from __future__ import annotations

import math

import pytest

from persona.errors import ConfigError
from persona.train.config import TrainConfig


def test_constant_is_the_learning_rate_at_every_step() -> None:
    config = TrainConfig(lr=0.03)
    assert {config.step_lr(step, 40) for step in range(40)} == {0.03}


def test_cosine_warms_up_peaks_at_lr_and_ends_at_a_tenth() -> None:
    config = TrainConfig(lr=0.03, schedule="cosine")
    rates = [config.step_lr(step, 40) for step in range(40)]
    assert rates[0] == pytest.approx(0.03 / 4)  # 10% of 40 steps warm up: 1/4 of the way
    assert max(rates) == pytest.approx(0.03)
    assert rates[-1] == pytest.approx(0.003)
    after_peak = rates[rates.index(max(rates)) :]
    assert all(a >= b for a, b in zip(after_peak, after_peak[1:], strict=False))
    assert all(math.isfinite(r) and r > 0 for r in rates)
    assert TrainConfig(lr=0.03, schedule="cosine").step_lr(0, 1) == 0.03  # one step: no schedule


def test_each_kind_defaults_to_its_own_rate_and_an_unknown_schedule_is_refused() -> None:
    assert TrainConfig().kind == "deep" and TrainConfig().lr == 0.02
    assert TrainConfig(kind="soft").lr == 0.03
    assert TrainConfig(kind="deep", lr=0.05).lr == 0.05
    with pytest.raises(
        ConfigError, match="--schedule must be one of constant, cosine, got 'linear'"
    ):
        TrainConfig(schedule="linear")
    with pytest.raises(ConfigError, match="--kind must be one of soft, deep, got 'wide'"):
        TrainConfig(kind="wide")
