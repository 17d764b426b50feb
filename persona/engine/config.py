"""Generation settings, validated where they are made."""

from __future__ import annotations

from dataclasses import dataclass

from persona.errors import ConfigError


@dataclass
class GenerationConfig:
    temperature: float = 0.7  # 0 means greedy
    top_p: float = 0.9
    top_k: int = 50  # 0 disables
    repetition_penalty: float = 1.1  # 1.0 disables
    max_new_tokens: int = 256
    seed: int | None = None

    def __post_init__(self) -> None:
        _check(self.temperature >= 0, "temperature", self.temperature, "must be 0 (greedy) or more")
        _check(0 < self.top_p <= 1, "top_p", self.top_p, "must be in (0, 1]")
        _check(self.top_k >= 0, "top_k", self.top_k, "must be 0 (off) or more")
        _check(
            self.repetition_penalty > 0,
            "repetition_penalty",
            self.repetition_penalty,
            "must be above 0",
        )
        _check(
            self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens, "must be at least 1"
        )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _check(ok: bool, field: str, value: object, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{field}={value!r} {rule}")
