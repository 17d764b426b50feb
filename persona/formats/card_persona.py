"""Where each card field goes in a persona, and back (docs/cards.md has the table).

    description (+ personality, scenario) -> the persona's description
    first_mes                             -> its greeting (`persona set NAME greeting=...`)
    mes_example                           -> its written example exchanges
    tags                                  -> its tags
    the whole card (V3 JSON)              -> the version's training record, key "card"

The record keeps what persona has no place for (alternate greetings, system_prompt, creator notes,
extensions, lorebook...), so an export writes them back; a field the persona changed since the
import is exported from the persona.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from persona.engine.config import MAX_GREETING_CHARS
from persona.formats.card import Card, parse_card
from persona.formats.card_text import (
    example_conversations,
    example_pairs,
    examples_text,
    fill_names,
)

RECORD_KEY = "card"  # the training record's key for the card as read (its V3 JSON object)
EXTENSION_KEY = "persona"  # the card extension that names the trained prompt


@dataclass
class CardPersona:
    """What a card gives a persona, in persona's own places."""

    name: str
    description: str
    greeting: str | None
    examples: list[tuple[str, str]]
    tags: list[str]
    conversations: list[list[tuple[str, str]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what did not fit, one line each


def persona_from_card(card: Card) -> CardPersona:
    name, shown = card.name.strip(), speaking_name(card)
    conversations = example_conversations(card.mes_example, name, shown)
    greeting = fill_names(card.first_mes, shown).strip() or None
    notes = []
    if greeting is not None and len(greeting) > MAX_GREETING_CHARS:
        notes.append(
            f"the greeting is {len(greeting)} characters, more than a persona's {MAX_GREETING_CHARS}; "
            "it stays in the card record only"
        )
        greeting = None
    return CardPersona(
        name=name,
        description=card_description(card),
        greeting=greeting,
        examples=example_pairs(conversations),
        tags=[tag.strip() for tag in card.tags if tag.strip()],
        conversations=conversations,
        notes=notes,
    )


def card_description(card: Card) -> str:
    """The persona's description: the card's description, then its personality and scenario as
    SillyTavern's default story string lays them out, names filled in."""
    name = speaking_name(card)
    parts = [card.description.strip()]
    if card.personality.strip():
        parts.append(f"{name}'s personality: {card.personality.strip()}")
    if card.scenario.strip():
        parts.append(f"Scenario: {card.scenario.strip()}")
    return fill_names("\n\n".join(part for part in parts if part), name)


def speaking_name(card: Card) -> str:
    """What `{{char}}` stands for: a V3 card's nickname where it has one (as V3 says), else its name."""
    nickname = card.other.get("nickname")  # V3's; read alike from any card, so a V1 card
    # stored as V3 in the record maps to the same persona
    return nickname.strip() if isinstance(nickname, str) and nickname.strip() else card.name.strip()


def card_record_of(versions: list[Any], version: int) -> dict[str, Any] | None:
    """The card a persona's `version` came from: that version's training record's, else the one
    of the newest version before it that has one (a retrain keeps the card), else None.
    `versions`: the library's VersionInfo records."""
    for info in sorted(versions, key=lambda v: v.version, reverse=True):
        record = (info.training or {}).get(RECORD_KEY)
        if info.version <= version and isinstance(record, dict):
            return record
    return None


def record_examples(record: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The written example exchanges of a stored card (PromptFormatError if it no longer reads)."""
    return persona_from_card(parse_card(record)).examples if record else []


def card_from_persona(
    name: str,
    description: str,
    greeting: str | None,
    examples: list[tuple[str, str]],
    tags: list[str],
    record: dict[str, Any] | None,
    reference: dict[str, Any] | None,
) -> Card:
    """A card for a persona: the imported card (record) where the persona still has what it gave,
    the persona's own value where that changed; `reference` names the trained prompt."""
    card = parse_card(record) if record else Card(name=name)
    derived = persona_from_card(card)
    if name != derived.name:
        card.name = name
    if description != derived.description:
        card.description, card.personality, card.scenario = description, "", ""
    if greeting != derived.greeting:
        card.first_mes = greeting or ""
    if [tuple(pair) for pair in examples] != derived.examples:
        card.mes_example = examples_text(examples)
    if sorted(tags) != sorted(derived.tags):
        card.tags = list(tags)
    extensions = dict(card.extensions)
    if reference is not None:
        extensions[EXTENSION_KEY] = reference
    else:
        extensions.pop(EXTENSION_KEY, None)
    card.extensions = extensions
    return card
