"""Character cards at the command line: `persona import CARD`, `persona export NAME FILE --format
card`, and the card's lines in `persona show` (docs/cards.md)."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from persona.errors import AlreadyExistsError, ConfigError, NotFoundError, PersonaError

CARD_FILE_SUFFIXES = (".png", ".json")


def run_card_import(args: argparse.Namespace) -> int:
    """A persona from a card: its description, greeting, tags and the card itself (which keeps the
    example exchanges), with an untrained prompt made from the description as version 1."""
    from persona.engine.config import PersonaDefaults
    from persona.formats.card_files import read_card
    from persona.formats.card_persona import RECORD_KEY, persona_from_card
    from persona.library import open_library
    from persona.model.loader import load_model
    from persona.train.card import check_card_name, starting_prompt, usable_tags

    card = read_card(args.path)
    mapped = persona_from_card(card)
    if args.description is not None:
        mapped.description = args.description
    mapped.name = args.name or mapped.name
    check_card_name(mapped.name)
    library = open_library(args.library)
    try:
        if library.has_persona(mapped.name):
            raise AlreadyExistsError(
                f"a persona named {mapped.name!r} already exists; pass --name NEW to import the card "
                "under another name, or `persona train --card` to train it"
            )
    finally:
        library.close()
    prompt = starting_prompt(load_model(args.model), mapped)
    library = open_library(args.library)
    try:
        library.add_version(
            mapped.name,
            prompt,
            description=mapped.description,
            model_id=prompt.base_model,
            training={
                "imported_from": str(args.path.resolve()),
                "format": "card",
                "trained": False,
                RECORD_KEY: card.to_v3(),
            },
            tags=usable_tags(mapped.tags),
            defaults=PersonaDefaults(greeting=mapped.greeting) if mapped.greeting else None,
        )
    finally:
        library.close()
    for note in mapped.notes:
        print(f"persona: note: {note}", file=sys.stderr)
    print(
        f"imported {mapped.name!r} from the character card {args.path}: description, "
        f"{'a greeting' if mapped.greeting else 'no greeting'}, {len(mapped.examples)} example "
        f"exchange(s), {len(mapped.tags)} tag(s). Version 1 is its description as an untrained "
        f"prompt; train it with `persona train --card {shlex.quote(str(args.path))} --name "
        f"{shlex.quote(mapped.name)}`"
    )
    return 0


def run_card_export(args: argparse.Namespace, library: Any) -> int:
    """Write the persona as a V3 card (PNG with a V2 chunk too, or JSON) that names its prompt."""
    from persona.formats.card_files import write_card
    from persona.formats.card_persona import card_from_persona, card_record_of, record_examples
    from persona.formats.card_picture import card_picture
    from persona.formats.files import refuse_existing

    suffix = args.path.suffix.lower()
    if suffix not in CARD_FILE_SUFFIXES:
        raise ConfigError(
            f"a card is written as .png (with a picture) or .json; got {str(args.path)!r}"
        )
    refuse_existing(args.path, args.force)  # before the picture is drawn
    info = library.get_persona(args.name)
    greeting = library.get_defaults(args.name).greeting
    version = args.prompt_version or info.active_version
    chosen = next((v for v in info.versions if v.version == version), None)
    if chosen is None:
        have = ", ".join(str(v.version) for v in info.versions) or "none"
        raise NotFoundError(f"persona {info.name!r} has no version {version} (it has {have})")
    record = card_record_of(info.versions, version)
    reference = {
        "model": info.name if version == info.active_version else f"{info.name}@{version}",
        "version": version,
        "prompt_sha256": chosen.sha256,
        "kind": chosen.kind,
        "num_virtual_tokens": chosen.num_virtual_tokens,
        "base_model": chosen.model_id,
        "trained": (chosen.training or {}).get("trained", True),
    }
    card = card_from_persona(
        info.name,
        info.description,
        greeting,
        record_examples(record),
        info.tags,
        record,
        reference,
    )
    picture = card_picture(info.name) if suffix == ".png" else None
    path = write_card(card, args.path, picture, force=args.force)
    print(
        f"exported {info.name!r} version {version} as a character card to {path}; "
        f"`persona serve` serves its prompt as the model {reference['model']!r}"
    )
    return 0


def card_lines(info: Any) -> list[tuple[str, str]]:
    """`persona show`'s lines for the example exchanges a persona's card gave it (none without)."""
    from persona.formats.card_persona import card_record_of, record_examples
    from persona.formats.card_text import USER_NAME

    try:
        examples = record_examples(card_record_of(info.versions, info.active_version))
    except PersonaError:  # a damaged record must not hide the persona
        return []
    lines = [("examples", f"{len(examples)} written exchange(s), from its character card")]
    for question, reply in examples:
        lines.append(("", f"{USER_NAME}: {' '.join(question.split())}"))
        lines.append(("", f"{info.name}: {' '.join(reply.split())}"))
    return lines if examples else []
