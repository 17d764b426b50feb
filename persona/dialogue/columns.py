"""Which field of a JSONL turn or CSV row holds the speaker, the text and the conversation id."""

from __future__ import annotations

from dataclasses import dataclass

from persona.errors import ConfigError


@dataclass(frozen=True)
class Columns:
    speaker: str = "speaker"
    text: str = "text"
    conversation: str = (
        "conversation"  # optional in the data: without it the log is one conversation
    )

    def __post_init__(self) -> None:
        for field_name in ("speaker", "text", "conversation"):
            value = getattr(self, field_name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"--{field_name}-column must name a column, got {value!r}")
        if self.speaker.casefold() == self.text.casefold():
            raise ConfigError(
                f"--speaker-column and --text-column must differ, both are {self.speaker!r}"
            )


def find_column(header: list[str], wanted: str) -> int | None:
    """Index of a column by name, case-insensitively and ignoring surrounding spaces."""
    folded = [name.strip().casefold() for name in header]
    key = wanted.strip().casefold()
    return folded.index(key) if key in folded else None
