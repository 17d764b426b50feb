"""Fuzz the character card readers: PNG cards bent by flipped bytes, truncation and forged chunks;
card JSON with every field of every JSON type; CharX zips with odd members. A read must give a
card with a name or be refused in one line, and a persona made from it must export the same card."""

from __future__ import annotations

import base64
import io
import json
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from persona.formats.card import LIST_FIELDS, TEXT_FIELDS, Card
from persona.formats.card_files import PNG_SIGNATURE, add_text_chunks, read_card
from persona.formats.card_persona import card_from_persona, persona_from_card
from tests.fuzz.harness import check, fuzz_settings

TEXT = st.text(max_size=40)
JSON_LEAVES = st.none() | st.booleans() | st.integers() | st.floats() | TEXT
JSON = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
FIELD = st.sampled_from([*TEXT_FIELDS, *LIST_FIELDS, "extensions", "nickname", "character_book"])
MACRO_TEXT = st.lists(
    st.sampled_from(list("ab \n:<>{}") + ["{{char}}", "{{user}}", "<START>", "<BOT>", "Ann:"]),
    max_size=30,
).map("".join)


def tiny_png() -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    pixels = zlib.compress(b"\x00\x00\x00\x00")
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


@st.composite
def card_values(draw: st.DrawFn) -> object:
    """A card object: valid V1/V2/V3 with macro-laden text, or any field set to any JSON value."""
    data: dict[str, object] = {"name": draw(st.sampled_from(["Ann", "Bo b", " x ", ""]) | TEXT)}
    for field in ("description", "first_mes", "mes_example", "personality", "scenario"):
        if draw(st.booleans()):
            data[field] = draw(MACRO_TEXT)
    for _ in range(draw(st.integers(0, 3))):
        data[draw(FIELD)] = draw(JSON | MACRO_TEXT)
    spec = draw(st.sampled_from(["chara_card_v2", "chara_card_v3", None, "other"]))
    if spec is None:
        return data
    value: object = {"spec": spec, "spec_version": "3.0", "data": data}
    return draw(st.just(value) | JSON) if draw(st.integers(0, 9)) == 0 else value


@st.composite
def png_cards(draw: st.DrawFn) -> bytes:
    """A PNG card: the JSON in `ccv3` or `chara`, maybe bent by byte flips and truncation."""
    text = json.dumps(draw(card_values()))
    key = draw(st.sampled_from(["ccv3", "chara", "CHARA", "other"]))
    data = add_text_chunks(tiny_png(), {key: base64.b64encode(text.encode()).decode()})
    if draw(st.booleans()):
        data = bytearray(data)
        for position in draw(st.lists(st.integers(0, len(data) - 1), max_size=4)):
            data[position] = draw(st.integers(0, 255))
        data = bytes(data[: draw(st.integers(0, len(data)))])
    return data


def assert_usable(card: Card | None) -> None:
    if card is None:
        return
    assert isinstance(card.name, str) and card.name.strip()
    mapped = persona_from_card(card)
    rebuilt = card_from_persona(
        mapped.name, mapped.description, mapped.greeting, mapped.examples, mapped.tags,
        card.to_v3(), None,
    )  # fmt: skip
    # a persona that changed nothing exports the card it came from, field for field
    expected = card.to_v3()
    expected["data"]["extensions"].pop("persona", None)
    assert rebuilt.to_v3() == expected


def read(name: str, data: bytes) -> Card | None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        return check(f"card {Path(name).suffix}", lambda: read_card(path))


def test_fuzz_png_cards() -> None:
    @fuzz_settings(600)
    @given(data=png_cards())
    def case(data: bytes) -> None:
        assert_usable(read("card.png", data))

    case()


def test_fuzz_json_cards() -> None:
    @fuzz_settings(600)
    @given(value=card_values(), raw=st.binary(max_size=30))
    def case(value: object, raw: bytes) -> None:
        assert_usable(read("card.json", json.dumps(value).encode()))
        read("raw.json", b"{" + raw)

    case()


def test_fuzz_charx_cards() -> None:
    @fuzz_settings(300)
    @given(
        value=card_values(),
        members=st.dictionaries(
            st.sampled_from(["card.json", "a/../b", "/abs", "assets/x.png", "x\\y", "ok.json"]),
            st.binary(max_size=20),
            max_size=3,
        ),
    )
    def case(value: object, members: dict[str, bytes]) -> None:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("card.json", json.dumps(value))
            for name, data in members.items():
                if name != "card.json":
                    archive.writestr(name, data)
        assert_usable(read("card.charx", buffer.getvalue()))

    case()
