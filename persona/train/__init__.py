"""Prompt tuning: optimise only an (N, D) soft prompt against the frozen model, then evaluate it honestly."""

from persona.train.config import DEFAULT_STEPS, TrainConfig

__all__ = ["DEFAULT_STEPS", "TrainConfig"]
