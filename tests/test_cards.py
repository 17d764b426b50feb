"""Character card files: reading other implementations' cards, writing ours, and the text inside."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from persona.formats.card import Card, parse_card
from persona.formats.card_files import card_kind, png_chunks, read_card, write_card
from persona.formats.card_persona import card_from_persona, persona_from_card
from persona.formats.card_picture import card_picture
from persona.formats.card_text import example_conversations, example_pairs, fill_names

FIXTURES = Path(__file__).parent / "fixtures" / "cards"


def test_an_aichar_card_reads_as_a_v1_card_with_its_examples() -> None:
    """aichar 1.0.5 (PyPI) wrote it: a flat card in the `chara` chunk (make_fixtures.py)."""
    card = read_card(FIXTURES / "aichar_v1.png")
    assert card.spec == "v1" and card.name == "Mara Voss"
    assert card.personality == "bold, wry, protective"
    mapped = persona_from_card(card)
    assert mapped.examples == [
        ("Who are you?", "Captain Mara Voss, of the airship Kestrel."),
        ("Where are we headed?", "North, past the storm wall, if the engines hold."),
        ("Are you afraid?", "*laughs* Of the sky? Never. Of my cook, sometimes."),
    ]
    assert mapped.description.endswith("Scenario: User has just signed on as a deckhand.")
    assert "metadata" not in card.other  # aichar's own bookkeeping is not a card field


def test_a_card_forge_png_and_its_json_read_alike() -> None:
    """card-forge 0.4.0 (PyPI) wrote both: V3 in `ccv3`, and V3 again in `chara` (its legacy)."""
    png, js = read_card(FIXTURES / "cardforge_v3.png"), read_card(FIXTURES / "cardforge_v3.json")
    assert png == js
    assert png.spec == "chara_card_v3" and png.alternate_greetings == [
        "Storm's coming. Best come inside."
    ]
    assert png.extensions == {"talkativeness": "0.5"} and png.other == {}


def test_the_ccv3_chunk_wins_over_chara(tmp_path) -> None:
    card = Card(name="Ada", description="new")
    old = Card(name="Ada", description="old")
    data = card_picture("Ada")
    from persona.formats.card_files import add_text_chunks

    both = add_text_chunks(
        data,
        {
            "chara": base64.b64encode(json.dumps(old.to_v2()).encode()).decode(),
            "ccv3": base64.b64encode(json.dumps(card.to_v3()).encode()).decode(),
        },
    )
    (tmp_path / "a.png").write_bytes(both)
    assert read_card(tmp_path / "a.png").description == "new"


def test_our_png_is_a_valid_png_with_one_chunk_of_each(tmp_path) -> None:
    path = write_card(
        Card(name="Zoë", description="ünïcode ✨"), tmp_path / "z.png", card_picture("Zoë")
    )
    chunks = png_chunks(path.read_bytes(), "z.png")
    keys = [body.split(b"\0")[0] for kind, body in chunks if kind == b"tEXt"]
    assert sorted(keys) == [b"ccv3", b"chara"]
    assert chunks[-1][0] == b"IEND"
    assert read_card(path).description == "ünïcode ✨"
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_writing_again_replaces_the_card_chunks_instead_of_adding_more(tmp_path) -> None:
    first = write_card(Card(name="A"), tmp_path / "a.png", card_picture("A"))
    again = write_card(Card(name="B"), tmp_path / "b.png", first.read_bytes())
    keys = [
        body.split(b"\0")[0]
        for kind, body in png_chunks(again.read_bytes(), "b")
        if kind == b"tEXt"
    ]
    assert sorted(keys) == [b"ccv3", b"chara"] and read_card(again).name == "B"


def test_card_kind_tells_cards_from_prompt_files(tmp_path) -> None:
    from tests.library_helpers import make_prompt

    prompt = make_prompt().save(tmp_path / "p.safetensors")
    assert card_kind(prompt) is None
    assert card_kind(FIXTURES / "aichar_v1.png") == "png"
    assert card_kind(FIXTURES / "cardforge_v3.json") == "json"
    (tmp_path / "adapter_config.json").write_text("{}")
    assert card_kind(tmp_path / "adapter_config.json") is None  # a PEFT adapter's
    assert card_kind(tmp_path) is None and card_kind(tmp_path / "missing.png") is None


def test_macros_are_text_except_the_two_names() -> None:
    text = (
        "{{char}} meets {{user}}; <BOT> and <USER>; {{random:a,b}} {{roll:1d6}} ${{7*7}} {{CHAR}}"
    )
    assert fill_names(text, "Ann") == (
        "Ann meets User; Ann and User; {{random:a,b}} {{roll:1d6}} ${{7*7}} Ann"
    )
    assert fill_names("{{char}}", r"\1 \g<0>") == r"\1 \g<0>"  # a name is never a pattern


def test_mes_example_blocks_turns_and_continued_lines() -> None:
    text = (
        "stray text before any speaker\n<START>\n{{user}}: Hi\n{{char}}: Hello\nand more\n"
        "<start>\nAnn: I open this one.\n{{user}}: Oh?\nAnn: Yes.\n<START>\n"
    )
    conversations = example_conversations(text, "Ann")
    assert conversations == [
        [("user", "Hi"), ("char", "Hello\nand more")],
        [("char", "I open this one."), ("user", "Oh?"), ("char", "Yes.")],
    ]
    assert example_pairs(conversations) == [("Hi", "Hello\nand more"), ("Oh?", "Yes.")]


def test_a_field_the_persona_changed_is_exported_from_the_persona() -> None:
    record = parse_card(
        {
            "spec": "chara_card_v2",
            "data": {
                "name": "Ann",
                "description": "{{char}} is kind.",
                "personality": "warm",
                "first_mes": "Hi {{user}}!",
                "mes_example": "<START>\n{{user}}: a\n{{char}}: b",
                "tags": ["x"],
            },
        }
    ).to_v3()
    mapped = persona_from_card(parse_card(record))
    same = card_from_persona(
        "Ann", mapped.description, mapped.greeting, mapped.examples, ["x"], record, None
    )
    assert same.description == "{{char}} is kind." and same.personality == "warm"
    assert (
        same.first_mes == "Hi {{user}}!" and same.mes_example == "<START>\n{{user}}: a\n{{char}}: b"
    )
    changed = card_from_persona(
        "Ann", "Ann is cruel.", "Go away.", [("q", "r")], ["y"], record, None
    )
    assert changed.description == "Ann is cruel." and changed.personality == ""
    assert changed.first_mes == "Go away." and changed.tags == ["y"]
    assert changed.mes_example == "<START>\n{{user}}: q\n{{char}}: r"


@pytest.mark.parametrize(
    "value, fragment",
    [
        ([], "is a JSON object, this is a list"),
        ({"spec": "chara_card_v9", "data": {}}, "not a character card"),
        ({"spec": "chara_card_v2", "data": []}, "needs a 'data' object"),
        ({"spec": "chara_card_v2", "data": {"name": ""}}, "has no name"),
        ({"spec": "chara_card_v2", "data": {"name": 5}}, "'name' must be text, got a number"),
        (
            {"spec": "chara_card_v3", "data": {"name": "A", "description": {"a": 1}}},
            "'description' must be text, got an object",
        ),
        ({"spec": "chara_card_v3", "data": {"name": "A", "tags": "a,b"}}, "'tags' must be a list"),
        (
            {"spec": "chara_card_v3", "data": {"name": "A", "alternate_greetings": [1]}},
            "'alternate_greetings' must be a list of texts, got a list holding a number",
        ),
        (
            {"spec": "chara_card_v3", "data": {"name": "A", "extensions": []}},
            "'extensions' must be an object",
        ),
        ({"name": "A", "first_mes": True}, "'first_mes' must be text, got true/false"),
    ],
)
def test_a_field_of_the_wrong_type_is_named(value, fragment) -> None:
    from persona.errors import PromptFormatError

    with pytest.raises(PromptFormatError) as caught:
        parse_card(value)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_a_v3_nickname_stands_for_char() -> None:
    card = parse_card(
        {
            "spec": "chara_card_v3",
            "data": {
                "name": "Margaret Thistlewood",
                "nickname": "Maggie",
                "description": "{{char}} bakes.",
                "first_mes": "{{char}} here!",
                "mes_example": "<START>\n{{user}}: Hi\nMargaret Thistlewood: Hello, says {{char}}.",
            },
        }
    )
    mapped = persona_from_card(card)
    assert mapped.name == "Margaret Thistlewood"
    assert mapped.description == "Maggie bakes." and mapped.greeting == "Maggie here!"
    assert mapped.examples == [("Hi", "Hello, says Maggie.")]
