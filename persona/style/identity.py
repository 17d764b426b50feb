"""Does a reply name the character? The identity questions and the name they should bring out."""

from __future__ import annotations

import re

IDENTITY_QUESTIONS = ("Who are you?", "What is your name?", "Introduce yourself.")
# words of a speaker heading that are a rank or an ordinal, not the character's name
TITLES = frozenset(
    "king queen prince princess duke duchess earl lord lady sir dame mistress master "
    "first second third fourth old young".split()
)


def character_name(speaker: str) -> str:
    """The name a character would give: `FALSTAFF` -> `Falstaff`, `KING LEAR` -> `Lear`.

    The last word that is not a title; the whole heading's last word where every word is one."""
    parts = re.findall(r"[^\W\d_]+(?:['-][^\W\d_]+)*", speaker)
    if not parts:
        raise ValueError(f"speaker {speaker!r} holds no name")
    named = [part for part in parts if part.lower() not in TITLES] or parts
    return named[-1].capitalize()


def names_character(answer: str, name: str) -> bool:
    """Whether `answer` says `name` as a word of its own, case-insensitively (`Falstaff's` counts)."""
    if not name.strip():
        raise ValueError("the character's name is empty")
    return re.search(rf"(?<!\w){re.escape(name.strip())}(?!\w)", answer, re.IGNORECASE) is not None
