"""Generation settings, validated where they are made, and a persona's own defaults for them.

Precedence, highest first: what the user or the request gives, the persona's defaults
(`PersonaDefaults`, stored with the persona in the library), the built-in `GenerationConfig` values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from persona.errors import ConfigError

MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 200
MAX_GREETING_CHARS = 4000
# field -> the rule its value must follow, as the error message words it
RULES: dict[str, str] = {
    "temperature": "must be 0 (greedy) or more",
    "top_p": "must be in (0, 1]",
    "top_k": "must be 0 (off) or more",
    "repetition_penalty": "must be at least 0.001",
    "max_new_tokens": "must be at least 1",
    "strength": "must be from 0 to 10 (1 is the persona as trained, 0 the bare model)",
    "stop": f"takes up to {MAX_STOP_STRINGS} non-empty strings of at most {MAX_STOP_CHARS} characters",
    "greeting": f"must be non-empty text of at most {MAX_GREETING_CHARS} characters",
}


# below this temperature, sampling is greedy (as vLLM does): logits / 1e-79 are infinite
GREEDY_BELOW = 1e-5
# a smaller penalty divides a seen token's logit into infinity, and sampling into NaN
MIN_REPETITION_PENALTY = 1e-3
MAX_STRENGTH = 10.0  # guidance beyond this only amplifies noise between the two rows


@dataclass
class GenerationConfig:
    temperature: float = 0.7  # 0 means greedy
    top_p: float = 0.9
    top_k: int = 50  # 0 disables
    repetition_penalty: float = 1.1  # 1.0 disables
    max_new_tokens: int = 256
    seed: int | None = None
    # persona strength (classifier-free guidance, persona.engine.guidance): 1 is the persona as
    # trained; above 1 each token's log-probabilities move further from the bare model's
    strength: float = 1.0

    def __post_init__(self) -> None:
        _check(self.temperature >= 0, "temperature", self.temperature)
        _check(0 < self.top_p <= 1, "top_p", self.top_p)
        _check(self.top_k >= 0, "top_k", self.top_k)
        _check(
            self.repetition_penalty >= MIN_REPETITION_PENALTY,
            "repetition_penalty",
            self.repetition_penalty,
        )
        _check(self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens)
        _check(
            _finite(self.strength) and 0 <= self.strength <= MAX_STRENGTH,
            "strength",
            self.strength,
        )

    @property
    def greedy(self) -> bool:
        """0, or a temperature so small that dividing by it overflows: the likeliest token."""
        return self.temperature < GREEDY_BELOW

    @property
    def guided(self) -> bool:
        """Whether a reply with a persona needs the bare row (any strength but 1)."""
        return self.strength != 1.0


# PersonaDefaults field -> the type its value has (bool is refused where a number is wanted)
DEFAULT_TYPES: dict[str, type] = {
    "temperature": float,
    "top_p": float,
    "top_k": int,
    "repetition_penalty": float,
    "max_new_tokens": int,
    "strength": float,
}
SAMPLING_FIELDS = tuple(DEFAULT_TYPES)


@dataclass(frozen=True)
class PersonaDefaults:
    """What a persona brings to a conversation: sampling values (None: not set, the built-in one
    applies), stop strings that end its replies, and the greeting it opens a chat with."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    max_new_tokens: int | None = None
    strength: float | None = None
    stop: tuple[str, ...] = ()
    greeting: str | None = None

    def __post_init__(self) -> None:
        for name, kind in DEFAULT_TYPES.items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{name}={value!r} is not a number; it {RULES[name]}")
            if kind is int and not (isinstance(value, int) or float(value).is_integer()):
                raise ConfigError(f"{name}={value!r} is not a whole number; it {RULES[name]}")
            if not _finite(value):
                raise ConfigError(f"{name}={_short(value)} {RULES[name]}")
            object.__setattr__(self, name, kind(value))
        # the same rules as GenerationConfig, so a stored default always makes a valid config
        GenerationConfig(**self.sampling())
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if not isinstance(stop, (list, tuple)):
            raise ConfigError(f"stop={self.stop!r} {RULES['stop']}")
        stop = tuple(stop)
        if len(stop) > MAX_STOP_STRINGS or any(
            not isinstance(s, str) or not s or len(s) > MAX_STOP_CHARS for s in stop
        ):
            raise ConfigError(f"stop={list(stop)!r} {RULES['stop']}")
        object.__setattr__(self, "stop", tuple(dict.fromkeys(stop)))
        greeting = self.greeting
        if greeting is not None and (
            not isinstance(greeting, str)
            or not greeting.strip()
            or len(greeting) > MAX_GREETING_CHARS
        ):
            shown = greeting if not isinstance(greeting, str) else greeting[:40]
            raise ConfigError(f"greeting={shown!r} {RULES['greeting']}")

    def sampling(self) -> dict[str, Any]:
        """The sampling values this persona sets (GenerationConfig field -> value)."""
        return {
            name: getattr(self, name) for name in SAMPLING_FIELDS if getattr(self, name) is not None
        }

    def apply(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """GenerationConfig keyword arguments: `overrides` (None values left out) over these
        defaults; what neither names keeps its built-in value."""
        return {**self.sampling(), **{k: v for k, v in overrides.items() if v is not None}}

    def to_dict(self) -> dict[str, Any]:
        """Only what is set: the form stored in the library and in a persona file."""
        record: dict[str, Any] = self.sampling()
        if self.stop:
            record["stop"] = list(self.stop)
        if self.greeting is not None:
            record["greeting"] = self.greeting
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> PersonaDefaults:
        """Validate a stored or imported record; an unknown key is an error naming it."""
        if not isinstance(record, dict):
            raise ConfigError(f"persona defaults must be a mapping, got {type(record).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(record) - known)
        if unknown:
            raise ConfigError(
                f"unknown persona setting {unknown[0]!r}; use one of {', '.join(sorted(known))}"
            )
        return cls(**record)

    @classmethod
    def from_table(cls, table: Any, where: str) -> PersonaDefaults:
        """A recipe's [defaults] table (a spec's, a starter's); errors start with `where`."""
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: [defaults] must be a table, got {table!r}")
        try:
            return cls.from_dict(table)
        except ConfigError as exc:
            raise ConfigError(f"{where}: [defaults] {exc}") from None

    def updated(self, changes: dict[str, Any]) -> PersonaDefaults:
        """A copy with `changes` made (a None value unsets that setting), validated."""
        record = {**self.to_dict(), **changes}
        return PersonaDefaults.from_dict({k: v for k, v in record.items() if v is not None})


def generation_config(defaults: PersonaDefaults | None, **overrides: Any) -> GenerationConfig:
    """The effective settings of one reply: `overrides` (None: not given) over the persona's
    `defaults` over the built-in values."""
    return GenerationConfig(**(defaults or PersonaDefaults()).apply(overrides))


def stop_strings(defaults: PersonaDefaults | None, given: list[str] | None = None) -> list[str]:
    """The stop strings of one reply: those given (a request's) then the persona's, each once."""
    return list(dict.fromkeys([*(given or []), *(defaults.stop if defaults else ())]))


def _check(ok: bool, field: str, value: object) -> None:
    if not ok:
        raise ConfigError(f"{field}={value!r} {RULES[field]}")


def _finite(value: int | float) -> bool:
    """A finite number that a float can hold (a 400-digit whole number is not one)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."
