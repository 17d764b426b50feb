"""`/export PATH`: the conversation as Markdown or JSON, chosen by the file's extension."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from persona.errors import ConfigError, PersonaError
from persona.tui.session import Turn
from persona.tui.widgets.message_bubble import speaker_label


def to_markdown(turns: Sequence[Turn], title: str = "Conversation") -> str:
    lines = [f"# {title}", ""]
    for turn in turns:
        note = " *(cut short)*" if turn.cut_short else ""
        lines += [
            f"**{speaker_label(turn.role, turn.persona)}**{note}",
            "",
            turn.content.rstrip(),
            "",
        ]
    return "\n".join(lines)


def to_json(turns: Sequence[Turn], conversation_id: int | None = None) -> str:
    messages = [
        {"role": t.role, "content": t.content, "persona": t.persona, "cut_short": t.cut_short}
        for t in turns
    ]
    return (
        json.dumps(
            {"conversation_id": conversation_id, "messages": messages}, indent=2, ensure_ascii=False
        )
        + "\n"
    )


def export_conversation(
    path: str | Path, turns: Sequence[Turn], conversation_id: int | None = None
) -> Path:
    """Write the conversation to `path` (.md/.markdown or .json) and return the resolved path."""
    target = Path(path).expanduser()
    suffix = target.suffix.lower()
    if suffix in (".md", ".markdown"):
        text = to_markdown(
            turns, f"Conversation {conversation_id}" if conversation_id else "Conversation"
        )
    elif suffix == ".json":
        text = to_json(turns, conversation_id)
    else:
        raise ConfigError(
            f"cannot tell the format of {str(target)!r}; end the path in .md or .json"
        )
    if not turns:
        raise ConfigError("the conversation is empty; nothing to export")
    try:
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise PersonaError(
            f"cannot write {str(target)!r} ({exc.strerror}); pick another path"
        ) from None
    return target.resolve()
