"""A character card as a training recipe (`persona train --card CARD [LOG]`) and as a persona's
starting point (`persona import CARD`).

With a LOG, the card's example exchanges are trained on beside it as a spec's written examples
are; without one, the card's example dialogues are the dialogue itself (each `<START>` block a
conversation, so the validation split holds out whole blocks). Greetings are not trained on: they
answer no one, and the persona keeps the first as its greeting.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona.dialogue.types import Conversation, Dialogue, Turn
from persona.errors import ConfigError, DialogueError, LibraryError
from persona.formats.card import Card
from persona.formats.card_files import MAX_CARD_FILE_BYTES, read_card
from persona.formats.card_persona import RECORD_KEY, CardPersona, persona_from_card
from persona.formats.card_text import USER_NAME
from persona.formats.files import read_bounded
from persona.library.records import check_name, check_tags
from persona.model.loader import LoadedModel
from persona.prompt.init import initial_prompt
from persona.prompt.softprompt import SoftPrompt
from persona.train.run import MIN_EXAMPLES
from persona.train.spec import PersonaSpec

IMPORTED_INIT_TOKENS = 20  # as TrainConfig.num_virtual_tokens


@dataclass
class CardSpec(PersonaSpec):
    """A spec made from a card: its name, description, example exchanges and tags, plus the
    card itself for the training record and its greeting for the persona's defaults."""

    card: Card | None = None
    mapped: CardPersona | None = None
    dialogue: Dialogue | None = field(default=None, repr=False)  # without a LOG: the card's own

    def training_extra(self) -> dict[str, Any]:
        return {RECORD_KEY: self.card.to_v3()} if self.card is not None else {}

    def defaults_changes(self) -> dict[str, Any]:
        greeting = self.mapped.greeting if self.mapped is not None else None
        return {"greeting": greeting} if greeting else {}

    def own_dialogue(self) -> Dialogue | None:
        return self.dialogue


def read_card_spec(path: Path, log: str | None, speaker: str | None) -> CardSpec:
    """The recipe in the card file at `path` (PNG, JSON or CharX); with a LOG, `speaker` (default:
    the character's name) is whose lines in it are learned."""
    card = read_card(path)
    data = read_bounded(Path(path), MAX_CARD_FILE_BYTES, "a character card")
    return card_spec(card, Path(path), data, log, speaker)


def card_spec(
    card: Card, path: Path, data: bytes, log: str | None, speaker: str | None
) -> CardSpec:
    """The recipe a card gives; `data` is the card file's bytes (its sha256 names the source)."""
    mapped = persona_from_card(card)
    mapped.tags = usable_tags(mapped.tags)
    replies = sum(role == "char" for turns in mapped.conversations for role, _ in turns)
    if not log and replies < MIN_EXAMPLES:
        held = f"only {replies} repl{'y' if replies == 1 else 'ies'}" if replies else "no replies"
        raise DialogueError(
            f"{path}: the card's example dialogues (mes_example) hold {held} by {mapped.name!r}; "
            f"training needs at least {MIN_EXAMPLES}: pass a LOG of the character's lines as well"
        )
    dialogue = None if log else card_dialogue(mapped, str(path), hashlib.sha256(data).hexdigest())
    return CardSpec(
        name=mapped.name,
        speaker=speaker or mapped.name,
        train=log or f"card:{path}",
        path=Path(path),
        description=mapped.description,
        tags=mapped.tags,
        examples=mapped.examples if log else [],  # without a LOG they are the dialogue already
        card=card,
        mapped=mapped,
        dialogue=dialogue,
    )


def check_card_name(name: str) -> None:
    """The persona name a card gives must suit the library; else one line that offers --name."""
    try:
        check_name(name)
    except LibraryError as exc:
        raise ConfigError(f"{exc}; pass --name NAME to choose one") from None


def usable_tags(tags: list[str]) -> list[str]:
    """The card's tags that the library takes (a tag of the wrong shape is left out, not fatal)."""
    kept = []
    for tag in tags:
        try:
            kept += check_tags([tag])
        except LibraryError:
            continue
    return kept


def card_dialogue(mapped: CardPersona, source: str, sha256: str) -> Dialogue:
    """The card's example dialogues as conversations: user turns as USER_NAME, the character's
    under its name."""
    conversations = [
        Conversation(
            turns=[
                Turn(mapped.name if role == "char" else USER_NAME, text) for role, text in turns
            ],
            title=f"example {index + 1}",
        )
        for index, turns in enumerate(mapped.conversations)
    ]
    return Dialogue(conversations=conversations, source=f"card:{source}", sha256=sha256)


def starting_prompt(loaded: LoadedModel, mapped: CardPersona) -> SoftPrompt:
    """An untrained soft prompt for an imported card: the embeddings of its description (a few
    sampled words when it has none), with the description as the system message of every chat."""
    embeddings, init = initial_prompt(
        loaded.model,
        loaded.tokenizer,
        IMPORTED_INIT_TOKENS,
        method="auto",
        description=mapped.description or None,
    )  # (N, D)
    return SoftPrompt(
        embeddings=embeddings,
        name=mapped.name,
        description=mapped.description,
        fingerprint=loaded.fingerprint,
        init=init,
        base_model=loaded.model_id,
        system=mapped.description,
    )
