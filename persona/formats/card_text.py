"""A card's text as persona uses it: the two name macros filled in, and `mes_example` read as
conversations of user and character turns.

    <START>
    {{user}}: Who are you?
    {{char}}: Captain Mara Voss, of the airship Kestrel.

Only `{{char}}`/`<BOT>`/`<char>` (the character's name) and `{{user}}`/`<USER>` (USER_NAME) are
replaced, by plain string replacement; every other macro (`{{random:...}}`, `{{roll}}`, ...) stays
text exactly as written. Nothing in a card is ever evaluated.
"""

from __future__ import annotations

import re

USER_NAME = "User"  # what {{user}} becomes: SillyTavern's name for a user who set none
_CHAR_MACRO = re.compile(r"\{\{char\}\}|<bot>|<char>", re.IGNORECASE)
_USER_MACRO = re.compile(r"\{\{user\}\}|<user>", re.IGNORECASE)
_START = re.compile(r"^\s*<start>\s*$", re.IGNORECASE)
_USER_LINE = re.compile(r"^\s*(?:\{\{user\}\}|<user>)\s*:\s?(.*)$", re.IGNORECASE)
_CHAR_LINE = re.compile(r"^\s*(?:\{\{char\}\}|<bot>|<char>)\s*:\s?(.*)$", re.IGNORECASE)

Turn = tuple[str, str]  # (role: "user" | "char", text)


def fill_names(text: str, char: str, user: str = USER_NAME) -> str:
    """`text` with the name macros replaced (a function replacement: a name is never a pattern)."""
    text = _CHAR_MACRO.sub(lambda _: char, text)
    return _USER_MACRO.sub(lambda _: user, text)


def example_conversations(
    mes_example: str, char: str, shown: str | None = None
) -> list[list[Turn]]:
    """The `<START>`-separated blocks of `mes_example` as turns, names filled in (`{{char}}` as
    `shown`, a V3 card's nickname, else `char`). A line that starts with `{{user}}:`, `{{char}}:`
    or `NAME:` (the character's name or nickname) begins a turn, other lines continue the one
    before; text before the first such line of a block is dropped."""
    names = "|".join(re.escape(name) for name in dict.fromkeys([char, shown or char]))
    own = re.compile(r"^\s*(?:" + names + r")\s*:\s?(.*)$", re.IGNORECASE)
    conversations: list[list[Turn]] = []
    turns: list[list[str]] = []  # [role, text] while the block is read
    for line in mes_example.replace("\r\n", "\n").split("\n"):
        if _START.match(line):
            conversations.append(_finish(turns, shown or char))
            turns = []
            continue
        user, mine = _USER_LINE.match(line), _CHAR_LINE.match(line) or own.match(line)
        if user:
            turns.append(["user", user.group(1)])
        elif mine:
            turns.append(["char", mine.group(1)])
        elif turns:
            turns[-1][1] += "\n" + line
    conversations.append(_finish(turns, shown or char))
    return [turns for turns in conversations if turns]


def _finish(turns: list[list[str]], char: str) -> list[Turn]:
    finished = [(role, fill_names(text.strip(), char)) for role, text in turns]
    return [(role, text) for role, text in finished if text]


def example_pairs(conversations: list[list[Turn]]) -> list[tuple[str, str]]:
    """(question, reply) exchanges: each character turn that answers a user turn."""
    pairs = []
    for turns in conversations:
        for before, after in zip(turns, turns[1:], strict=False):
            if before[0] == "user" and after[0] == "char":
                pairs.append((before[1], after[1]))
    return pairs


def examples_text(pairs: list[tuple[str, str]]) -> str:
    """Written exchanges as a card's `mes_example`: one `<START>` block each."""
    return "\n".join(
        f"<START>\n{{{{user}}}}: {question}\n{{{{char}}}}: {reply}" for question, reply in pairs
    )
