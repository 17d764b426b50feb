"""Convert ORM rows to the plain `info` records, and validate what goes into the library."""

from __future__ import annotations

import difflib
import json
import re
from datetime import datetime, timezone
from typing import Any

from persona.engine.config import PersonaDefaults
from persona.errors import ConfigError, LibraryError, NotFoundError
from persona.library.info import MessageInfo, VersionInfo

MAX_NAME_CHARS = 100
MAX_TAG_CHARS = 50
ROLES = ("user", "assistant", "system")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def aware(moment: datetime | str) -> datetime:
    """The library stores naive UTC (SQLAlchemy writes it as ISO text); hand out aware datetimes."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


def not_found(name: str, names: list[str]) -> NotFoundError:
    """ "no persona named 'x'", with the closest existing names as a hint."""
    by_lower = {n.lower(): n for n in names}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.6)
    hint = (
        f"did you mean {', '.join(repr(by_lower[c]) for c in close)}?"
        if close
        else "see `persona list`"
    )
    return NotFoundError(f"no persona named {name!r}; {hint}")


def check_name(name: str) -> str:
    """A persona name: 1-100 printable characters, no surrounding spaces (used as a CLI argument)."""
    if not isinstance(name, str) or not name.strip():
        raise LibraryError("a persona name cannot be empty; choose a name such as 'hamlet'")
    if name != name.strip() or _CONTROL.search(name) or len(name) > MAX_NAME_CHARS:
        raise LibraryError(
            f"persona name {name!r} is not usable; use up to {MAX_NAME_CHARS} printable characters without surrounding spaces"
        )
    return name


def check_tags(tags: list[str]) -> list[str]:
    cleaned: list[str] = []
    for tag in tags:
        if (
            not isinstance(tag, str)
            or not tag.strip()
            or _CONTROL.search(tag)
            or len(tag.strip()) > MAX_TAG_CHARS
        ):
            raise LibraryError(
                f"tag {tag!r} is not usable; use up to {MAX_TAG_CHARS} printable characters"
            )
        if tag.strip() not in cleaned:
            cleaned.append(tag.strip())
    return sorted(cleaned)


def dump_record(value: dict[str, Any] | None, what: str) -> str | None:
    """JSON text for a training or metrics record (None stays NULL)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise LibraryError(f"the {what} record must be a mapping, got {type(value).__name__}")
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise LibraryError(f"the {what} record cannot be stored as JSON ({exc})") from None


def load_record(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None  # a damaged record must not hide the persona; show it as missing
    return value if isinstance(value, dict) else None


# held-out NLL once named its conditions otherwise than the style report; a record stored then
# reads with today's names, the style report's: no_prompt, written_prompt, persona
_OLD_METRIC_NAMES = {
    "hard_prompt": "written_prompt",
    "soft_prompt": "persona",
    "soft_minus_none": "persona_minus_no_prompt",
    "soft_minus_written": "persona_minus_written_prompt",
}
_NAMED_SECTIONS = ("nll", "interval", "difference")  # the parts of a metrics record keyed by them


def current_metric_names(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """A metrics record with today's condition names (`soft_prompt` read as `persona`, ...)."""
    if metrics is None:
        return None
    current = dict(metrics)
    for section in _NAMED_SECTIONS:
        named = current.get(section)
        if isinstance(named, dict) and any(key in _OLD_METRIC_NAMES for key in named):
            current[section] = {
                _OLD_METRIC_NAMES.get(key, key): value for key, value in named.items()
            }
    return current


def load_metrics(text: str | None) -> dict[str, Any] | None:
    """A stored metrics record, with today's condition names."""
    return current_metric_names(load_record(text))


def dump_defaults(defaults: PersonaDefaults) -> str | None:
    """The defaults column: JSON of what is set, NULL when nothing is."""
    record = defaults.to_dict()
    return json.dumps(record, sort_keys=True, ensure_ascii=False) if record else None


def defaults_from_json(name: str, text: str | None) -> PersonaDefaults:
    """The stored defaults of persona `name`; a record that no longer validates is an error that
    says how to reset it, never silently other settings."""
    if not text:
        return PersonaDefaults()
    try:
        return PersonaDefaults.from_dict(json.loads(text))
    except (ValueError, TypeError) as exc:  # ConfigError is a ValueError
        reason = exc if isinstance(exc, ConfigError) else "not JSON"
        raise LibraryError(
            f"the stored defaults of persona {name!r} are damaged ({reason}); "
            f"clear them with `persona set {name} --reset` and set them again"
        ) from None


def version_info(row: Any, active_version: int) -> VersionInfo:
    """`row`: a PromptVersion (or a row with the same column names)."""
    return VersionInfo(
        version=row.version,
        num_virtual_tokens=row.num_virtual_tokens,
        hidden_size=row.hidden_size,
        dtype=row.dtype,
        sha256=row.sha256,
        model_id=row.model_id,
        fingerprint=row.fingerprint,
        fingerprint_json=row.fingerprint_json,
        init=row.init,
        training=load_record(row.training_json),
        metrics=load_metrics(row.metrics_json),
        created=aware(row.created),
        active=row.version == active_version,
        kind=row.kind or "soft",
    )


def message_info(row: Any) -> MessageInfo:
    return MessageInfo(
        id=row.id,
        conversation_id=row.conversation_id,
        role=row.role,
        content=row.content,
        persona=row.persona_name,
        created=aware(row.created),
        token_count=row.token_count,
        cut_short=bool(row.cut_short),
    )
