"""Hostile character cards: each is refused in one line, before anything is read past its bound,
and `persona import` leaves the library as it was."""

from __future__ import annotations

import base64
import json
import struct
import zipfile
import zlib
from pathlib import Path

import pytest

from persona.cli.main import main
from persona.errors import PromptFormatError
from persona.formats.card_files import (
    MAX_CARD_FILE_BYTES,
    PNG_SIGNATURE,
    read_card,
)
from persona.library import open_library

GOOD = {"spec": "chara_card_v2", "spec_version": "2.0", "data": {"name": "Eve"}}


def chunk(kind: bytes, body: bytes, *, length: int | None = None, crc: int | None = None) -> bytes:
    size = len(body) if length is None else length
    check = zlib.crc32(kind + body) if crc is None else crc
    return struct.pack(">I", size) + kind + body + struct.pack(">I", check)


def png(*chunks: bytes) -> bytes:
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
    return PNG_SIGNATURE + header + b"".join(chunks) + chunk(b"IEND", b"")


def text_chunk(key: str, value: bytes) -> bytes:
    return chunk(b"tEXt", key.encode() + b"\0" + value)


def card_b64(value: object) -> bytes:
    return base64.b64encode(json.dumps(value).encode())


def refused(path: Path, *fragments: str) -> None:
    with pytest.raises(PromptFormatError) as caught:
        read_card(path)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400, message
    for fragment in fragments:
        assert fragment in message, message


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_a_good_handmade_png_reads(tmp_path) -> None:
    assert (
        read_card(write(tmp_path, "ok.png", png(text_chunk("chara", card_b64(GOOD))))).name == "Eve"
    )


def test_a_png_that_is_not_one(tmp_path) -> None:
    refused(write(tmp_path, "card.png", b"GIF89a not a png at all"), "not a PNG file")
    refused(write(tmp_path, "empty.png", b""), "not a PNG file")


def test_a_damaged_or_cut_png(tmp_path) -> None:
    good = png(text_chunk("chara", card_b64(GOOD)))
    refused(write(tmp_path, "cut.png", good[:40]), "damaged")
    refused(write(tmp_path, "noend.png", good[: -len(chunk(b"IEND", b""))]), "cut short")
    bad_crc = png(chunk(b"tEXt", b"chara\0" + card_b64(GOOD), crc=1))
    refused(write(tmp_path, "crc.png", bad_crc), "bad checksum")


def test_a_text_chunk_that_says_it_holds_gigabytes_is_refused_before_reading(tmp_path) -> None:
    lying = png(chunk(b"tEXt", b"chara\0AAAA", length=3 * 1024**3))
    refused(write(tmp_path, "giga.png", lying), "far too large", "limit")


def test_a_file_of_gigabytes_is_refused_before_reading(tmp_path) -> None:
    path = tmp_path / "huge.png"
    with path.open("wb") as handle:  # sparse: takes no disk
        handle.write(PNG_SIGNATURE)
        handle.truncate(MAX_CARD_FILE_BYTES + 1)
    refused(path, "far too large")


def test_a_png_of_a_million_empty_chunks(tmp_path) -> None:
    empty = chunk(b"teXt", b"")  # an ancillary chunk nobody knows: 12 bytes each
    refused(write(tmp_path, "many.png", png(empty * 1_000_000)), "more than 100000 chunks")


def test_a_compressed_text_chunk_that_unpacks_to_a_bomb(tmp_path) -> None:
    bomb = zlib.compress(b"A" * (64 * 1024 * 1024), 9)  # 64 MiB of base64 letters, 64 KiB packed
    refused(
        write(tmp_path, "z.png", png(chunk(b"zTXt", b"chara\0\0" + bomb))), "unpacks to more than"
    )
    itxt = chunk(b"iTXt", b"ccv3\0\x01\x00\0\0" + bomb)
    refused(write(tmp_path, "i.png", png(itxt)), "unpacks to more than")


def test_a_compressed_card_within_bounds_reads(tmp_path) -> None:
    packed = zlib.compress(card_b64(GOOD))
    path = write(tmp_path, "z.png", png(chunk(b"zTXt", b"chara\0\0" + packed)))
    assert read_card(path).name == "Eve"


def test_bad_base64_json_and_text(tmp_path) -> None:
    refused(
        write(tmp_path, "b.png", png(text_chunk("chara", b"!!!not base64!!!"))), "not valid base64"
    )
    refused(
        write(tmp_path, "j.png", png(text_chunk("ccv3", base64.b64encode(b"{nope")))),
        "not valid JSON",
    )
    latin = base64.b64encode('{"name": "\xe9"}'.encode("latin-1"))
    refused(write(tmp_path, "u.png", png(text_chunk("chara", latin))), "not UTF-8")
    deep = base64.b64encode(b"[" * 100_000 + b"]" * 100_000)
    refused(write(tmp_path, "d.png", png(text_chunk("chara", deep))), "not valid JSON")
    refused(
        write(tmp_path, "none.png", png(text_chunk("Comment", b"hello"))), "no 'ccv3' or 'chara'"
    )


def test_bad_json_files(tmp_path) -> None:
    refused(write(tmp_path, "a.json", b"{"), "not valid JSON")
    refused(
        write(tmp_path, "b.json", b"  [1, 2]"), "a character card is a JSON object, this is a list"
    )
    refused(
        write(
            tmp_path, "c.json", json.dumps({"spec": "chara_card_v2", "data": {"name": 3}}).encode()
        ),
        "'name' must be text",
    )
    refused(write(tmp_path, "d.json", b"\xff\xfe{}"), "not UTF-8")


def charx(tmp_path: Path, members: dict[str, bytes], name: str = "c.charx") -> Path:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    return path


def test_a_good_charx_reads(tmp_path) -> None:
    path = charx(
        tmp_path, {"card.json": json.dumps(GOOD).encode(), "assets/icon/images/main.png": b"x"}
    )
    assert read_card(path).name == "Eve"


@pytest.mark.parametrize(
    "evil", ["../../etc/evil.txt", "/etc/passwd", "assets/../../x", "a\\..\\b", "C:/x"]
)
def test_a_charx_with_a_traversal_path(tmp_path, evil) -> None:
    path = charx(tmp_path, {"card.json": json.dumps(GOOD).encode(), evil: b"x"})
    refused(path, "unsafe path")


def test_a_charx_bomb(tmp_path) -> None:
    path = charx(tmp_path, {"card.json": b" " * (64 * 1024 * 1024)})  # 64 KiB packed
    refused(path, "card.json is")


def test_a_charx_whose_header_lies_about_the_size(tmp_path) -> None:
    path = charx(tmp_path, {"card.json": b" " * (16 * 1024 * 1024) + json.dumps(GOOD).encode()})
    data = bytearray(path.read_bytes())
    real = struct.pack("<I", 16 * 1024 * 1024 + len(json.dumps(GOOD)))
    data = bytes(data).replace(real, struct.pack("<I", 100))  # both headers claim 100 bytes
    path.write_bytes(data)
    with pytest.raises(PromptFormatError) as caught:
        read_card(path)
    assert "\n" not in str(caught.value)


def test_a_charx_without_card_json_and_one_that_is_not_a_zip(tmp_path) -> None:
    refused(charx(tmp_path, {"other.json": b"{}"}), "without card.json")
    refused(write(tmp_path, "broken.charx", b"PK\x03\x04 and then nothing"), "not a readable zip")


def test_import_of_a_hostile_card_is_one_line_and_adds_nothing(tmp_path, capsys) -> None:
    library = open_library()
    before = [p.name for p in library.list_personas()]
    library.close()
    cases = [
        write(tmp_path, "notpng.png", b"hello"),
        write(tmp_path, "giga.png", png(chunk(b"tEXt", b"chara\0AAAA", length=3 * 1024**3))),
        charx(tmp_path, {"card.json": json.dumps(GOOD).encode(), "../x": b"x"}, "t.charx"),
        write(
            tmp_path,
            "type.json",
            json.dumps({"spec": "chara_card_v3", "data": {"name": "E", "tags": 7}}).encode(),
        ),
    ]
    for path in cases:
        code = main(["import", str(path)])
        err = capsys.readouterr().err
        assert code == 1 and err.startswith("persona: error: ") and err.count("\n") == 1, err
    library = open_library()
    try:
        assert [p.name for p in library.list_personas()] == before
    finally:
        library.close()
