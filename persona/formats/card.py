"""Character cards (Character Card V1, V2 `chara_card_v2`, V3 `chara_card_v3`) as one checked record.

    {"spec": "chara_card_v3", "spec_version": "3.0", "data": {"name": ..., "description": ...}}

V2 and V3 keep the character under `data`; V1 is the same fields at the top level. Every field is
checked for its type here, so a hostile card fails in one line that names the field; macros such as
`{{char}}` stay text (persona/formats/card_text.py replaces the two name macros, nothing else).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from persona.errors import PromptFormatError

SPEC_V2, SPEC_V3 = "chara_card_v2", "chara_card_v3"
TEXT_FIELDS = (
    "name",
    "description",
    "personality",
    "scenario",
    "first_mes",
    "mes_example",
    "system_prompt",
    "post_history_instructions",
    "creator_notes",
    "creator",
    "character_version",
)
LIST_FIELDS = ("alternate_greetings", "tags", "group_only_greetings")
V1_FIELDS = ("name", "description", "personality", "scenario", "first_mes", "mes_example")
MAX_NAME_CHARS = 200
MAX_LIST_ITEMS = 1000


@dataclass
class Card:
    """One character, whichever spec it was read from; `other` keeps every further field of
    `data` (character_book, nickname, assets, source, dates...) as read, so an export keeps them."""

    name: str
    description: str = ""
    personality: str = ""
    scenario: str = ""
    first_mes: str = ""
    mes_example: str = ""
    system_prompt: str = ""
    post_history_instructions: str = ""
    creator_notes: str = ""
    creator: str = ""
    character_version: str = ""
    alternate_greetings: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    group_only_greetings: list[str] = field(default_factory=list)
    extensions: dict[str, Any] = field(default_factory=dict)
    other: dict[str, Any] = field(default_factory=dict)
    spec: str = SPEC_V3  # the spec it was read as: chara_card_v3, chara_card_v2 or "v1"

    def __post_init__(self) -> None:
        for name in TEXT_FIELDS:
            _check_text(name, getattr(self, name))
        for name in LIST_FIELDS:
            _check_list(name, getattr(self, name))
        if not self.name.strip():
            raise PromptFormatError("the card has no name; a character card needs data.name")
        if len(self.name) > MAX_NAME_CHARS:
            raise PromptFormatError(
                f"the card's name is {len(self.name)} characters; at most {MAX_NAME_CHARS} are accepted"
            )
        if not isinstance(self.extensions, dict):
            raise PromptFormatError(
                f"card field 'extensions' must be an object, got {_kind(self.extensions)}"
            )

    def data(self, *, v3: bool) -> dict[str, Any]:
        """The `data` object of a V2 or V3 card: V3 adds group_only_greetings and the fields kept
        in `other`; V2 keeps only its own fields (and character_book, which V2 defines)."""
        record: dict[str, Any] = {name: getattr(self, name) for name in TEXT_FIELDS}
        record["alternate_greetings"] = list(self.alternate_greetings)
        record["tags"] = list(self.tags)
        record["extensions"] = dict(self.extensions)
        if v3:
            record["group_only_greetings"] = list(self.group_only_greetings)
            record.update({k: v for k, v in self.other.items() if k not in record})
        elif "character_book" in self.other:
            record["character_book"] = self.other["character_book"]
        return record

    def to_v3(self) -> dict[str, Any]:
        return {"spec": SPEC_V3, "spec_version": "3.0", "data": self.data(v3=True)}

    def to_v2(self) -> dict[str, Any]:
        """A V2 card, with the V1 fields also at the top level for readers older than V2 (as
        SillyTavern writes its `chara` chunk)."""
        data = self.data(v3=False)
        flat = {name: data[name] for name in V1_FIELDS}
        return {**flat, "spec": SPEC_V2, "spec_version": "2.0", "data": data}


def parse_card(value: Any) -> Card:
    """A Card from decoded JSON: V3, V2 (under `data`) or V1 (flat); PromptFormatError names what
    is wrong."""
    if not isinstance(value, dict):
        raise PromptFormatError(
            f"a character card is a JSON object, this is {_kind(value)}; is it a card?"
        )
    spec = value.get("spec")
    if spec in (SPEC_V2, SPEC_V3):
        data = value.get("data")
        if not isinstance(data, dict):
            raise PromptFormatError(f"a {spec} card needs a 'data' object, got {_kind(data)}")
    elif spec is None and "name" in value:
        data, spec = value, "v1"
    else:
        raise PromptFormatError(
            f"not a character card (spec {str(spec)[:40]!r}); expected chara_card_v2, chara_card_v3 "
            "or a V1 card with a name"
        )
    known = {name: _text(name, data.get(name)) for name in TEXT_FIELDS}
    lists = {name: _strings(name, data.get(name)) for name in LIST_FIELDS}
    extensions = data.get("extensions")
    if extensions is None:
        extensions = {}
    if not isinstance(extensions, dict):
        raise PromptFormatError(
            f"card field 'extensions' must be an object, got {_kind(extensions)}"
        )
    skip = {*TEXT_FIELDS, *LIST_FIELDS, "extensions"}
    if spec == "v1":
        skip |= {"spec", "spec_version", "data", "metadata"}
    other = {k: v for k, v in data.items() if k not in skip and isinstance(k, str)}
    checked: dict[str, Any] = {**known, **lists}  # every field checked above, by its kind
    return Card(**checked, extensions=extensions, other=other, spec=spec)


def card_json(card: Card, *, v3: bool = True) -> str:
    """The card as JSON text (V3 unless v3=False), UTF-8 characters kept as they are."""
    return json.dumps(card.to_v3() if v3 else card.to_v2(), ensure_ascii=False, indent=2)


def _text(name: str, value: Any) -> str:
    if value is None:
        return ""
    _check_text(name, value)
    return value


def _strings(name: str, value: Any) -> list[str]:
    if value is None:
        return []
    _check_list(name, value)
    return list(value)


def _check_text(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise PromptFormatError(f"card field {name!r} must be text, got {_kind(value)}")


def _check_list(name: str, value: Any) -> None:
    if not isinstance(value, list):
        raise PromptFormatError(f"card field {name!r} must be a list of texts, got {_kind(value)}")
    wrong = next((item for item in value if not isinstance(item, str)), "")
    if not isinstance(wrong, str):
        raise PromptFormatError(
            f"card field {name!r} must be a list of texts, got a list holding {_kind(wrong)}"
        )
    if len(value) > MAX_LIST_ITEMS:
        raise PromptFormatError(
            f"card field {name!r} holds {len(value)} items; at most {MAX_LIST_ITEMS} are accepted"
        )


def _kind(value: Any) -> str:
    """A JSON value's kind, for a message: 'a number', 'a list of 3 items', 'null'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
