"""Character card files: a PNG with the card in a text chunk (`ccv3` V3, `chara` V2/V1, base64
JSON), a `.json` card, or a CharX zip (`card.json` at its root).

Every size is bounded before it is read or unpacked, and every failure is one PromptFormatError
line; nothing is written until the whole card is ready (writes go through a temporary file).
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from persona.errors import PromptFormatError
from persona.formats.card import Card, card_json, parse_card
from persona.formats.files import read_bounded, refuse_existing, writing_to
from persona.paths import write_private_atomic

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
MAX_CARD_FILE_BYTES = 64 * 1024 * 1024  # a card's picture is a few MB; a CharX may carry assets
MAX_CARD_JSON_BYTES = 8 * 1024 * 1024  # the card's JSON, after base64 or unzipping
MAX_TEXT_CHUNK_BYTES = 12 * 1024 * 1024  # base64 of MAX_CARD_JSON_BYTES, with room
MAX_CHARX_ENTRIES = 10_000
MAX_CHARX_UNPACKED = 1024 * 1024 * 1024  # what all members of a CharX together say they unpack to
MAX_PNG_CHUNKS = 100_000  # a picture has a handful; millions of empty ones are an attack
CARD_KEYS = ("ccv3", "chara")  # the V3 chunk wins over the V2 one, as both specs say
TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")


def card_kind(path: Path) -> str | None:
    """'png', 'json' or 'charx' when `path` is a character card file, else None (a prompt file).

    Decided by content: PNG and JSON files are never prompts; a zip is a CharX when it is named
    .charx or holds card.json (a KoboldAI zip does not). A file named .png, .json or .charx that is
    none of them is still taken for a card, so that reading it says what is wrong with it."""
    path = Path(path)
    try:
        if not path.is_file():
            return None  # the prompt readers report a missing path or a PEFT directory
        with path.open("rb") as handle:
            head = handle.read(64)
    except OSError:
        return None
    named = path.suffix.lower().lstrip(".")
    if path.name == "adapter_config.json":  # a PEFT adapter's
        return None
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
        return "json"
    if head.startswith(ZIP_MAGIC):
        if Path(path).suffix.lower() == ".charx":
            return "charx"
        try:
            with zipfile.ZipFile(path) as archive:
                return "charx" if "card.json" in archive.namelist() else None
        except (zipfile.BadZipFile, OSError, ValueError):
            return None
    return named if named in ("png", "json", "charx") else None


def read_card(path: Path) -> Card:
    """The card in a PNG, JSON or CharX file (detected from the content)."""
    path = Path(path)
    kind = card_kind(path)
    if kind == "png":
        text = _png_card_text(path)
    elif kind == "json":
        text = _utf8(read_bounded(path, MAX_CARD_JSON_BYTES, "a character card"), path)
    elif kind == "charx":
        text = _utf8(_charx_card_json(path), path)
    else:
        raise PromptFormatError(
            f"{path}: not a character card; expected a PNG card, a .json card or a .charx zip"
        )
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise PromptFormatError(f"{path}: the card is not valid JSON ({str(exc)[:100]})") from None
    try:
        return parse_card(value)
    except PromptFormatError as exc:
        raise PromptFormatError(f"{path}: {exc}") from None


def write_card(
    card: Card, path: Path, image_png: bytes | None = None, *, force: bool = False
) -> Path:
    """Write `card` as a PNG (`image_png` with a `ccv3` V3 chunk and a `chara` V2 chunk, as
    SillyTavern writes both) when `path` ends in .png, else as V3 JSON. Owner-only, atomic."""
    path = Path(path)
    refuse_existing(path, force)
    if path.suffix.lower() == ".png":
        if image_png is None:
            raise PromptFormatError("a PNG card needs a picture")
        data = add_text_chunks(
            image_png,
            {
                "chara": _base64_json(card_json(card, v3=False)),
                "ccv3": _base64_json(card_json(card, v3=True)),
            },
        )
    else:
        data = (card_json(card, v3=True) + "\n").encode("utf-8")
    with writing_to(path):
        return write_private_atomic(path, data)


def png_chunks(data: bytes, source: str) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk up to IEND; a bad signature, length or CRC is one line."""
    if not data.startswith(PNG_SIGNATURE):
        raise PromptFormatError(f"{source}: not a PNG file (no PNG signature)")
    chunks, offset = [], len(PNG_SIGNATURE)
    while True:
        if offset + 8 > len(data):
            raise PromptFormatError(f"{source}: the PNG is cut short (no IEND chunk)")
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if kind in TEXT_CHUNKS and length > MAX_TEXT_CHUNK_BYTES:
            raise PromptFormatError(
                f"{source}: a PNG text chunk of {length} bytes is far too large for a card "
                f"(limit {MAX_TEXT_CHUNK_BYTES})"
            )
        end = offset + 8 + length + 4
        if length > 0x7FFFFFFF or end > len(data):
            raise PromptFormatError(
                f"{source}: the PNG is damaged (a {kind!r} chunk runs past the end of the file)"
            )
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(kind + body) != crc:
            raise PromptFormatError(
                f"{source}: the PNG is damaged (bad checksum in a {kind!r} chunk)"
            )
        chunks.append((kind, body))
        if kind == b"IEND":
            return chunks
        if len(chunks) > MAX_PNG_CHUNKS:
            raise PromptFormatError(
                f"{source}: a PNG of more than {MAX_PNG_CHUNKS} chunks is not a card picture"
            )
        offset = end


def add_text_chunks(png: bytes, texts: dict[str, str]) -> bytes:
    """`png` with its text chunks named in `texts` replaced by tEXt chunks of those values (ASCII
    base64), placed before IEND."""
    chunks = [
        (kind, body)
        for kind, body in png_chunks(png, "the picture")
        if not (kind in TEXT_CHUNKS and _keyword(body).lower() in texts)
    ]
    added = [
        (b"tEXt", key.encode("latin-1") + b"\0" + value.encode("ascii"))
        for key, value in texts.items()
    ]
    ordered = chunks[:-1] + added + chunks[-1:]
    out = [PNG_SIGNATURE]
    for kind, body in ordered:
        out.append(
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )
    return b"".join(out)


def _png_card_text(path: Path) -> str:
    data = read_bounded(path, MAX_CARD_FILE_BYTES, "a character card")
    found: dict[str, bytes] = {}
    for kind, body in png_chunks(data, str(path)):
        if kind not in TEXT_CHUNKS:
            continue
        key = _keyword(body).lower()
        if key in CARD_KEYS and key not in found:
            found[key] = _chunk_text(kind, body, path)
    for key in CARD_KEYS:
        if key in found:
            try:
                raw = base64.b64decode(b"".join(found[key].split()), validate=True)
            except (binascii.Error, ValueError):
                raise PromptFormatError(
                    f"{path}: the {key!r} chunk is not valid base64; the card is damaged"
                ) from None
            if len(raw) > MAX_CARD_JSON_BYTES:
                raise PromptFormatError(
                    f"{path}: the card's JSON is {len(raw)} bytes (limit {MAX_CARD_JSON_BYTES})"
                )
            return _utf8(raw, path)
    raise PromptFormatError(
        f"{path}: a PNG without a character card (no 'ccv3' or 'chara' text chunk)"
    )


def _keyword(body: bytes) -> str:
    return body.split(b"\0", 1)[0][:79].decode("latin-1")


def _chunk_text(kind: bytes, body: bytes, path: Path) -> bytes:
    """The value of a tEXt, zTXt or iTXt chunk (compressed ones unpacked within the bound)."""
    _, _, rest = body.partition(b"\0")
    if kind == b"tEXt":
        return rest
    if kind == b"zTXt":
        return _inflate(rest[1:], path)
    if len(rest) < 2:  # iTXt: flag, method, language\0, translated keyword\0, text
        raise PromptFormatError(f"{path}: a damaged iTXt chunk")
    compressed, tail = rest[0], rest[2:]
    parts = tail.split(b"\0", 2)
    if len(parts) < 3:
        raise PromptFormatError(f"{path}: a damaged iTXt chunk")
    return _inflate(parts[2], path) if compressed else parts[2]


def _inflate(data: bytes, path: Path) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_TEXT_CHUNK_BYTES + 1)
    except zlib.error:
        raise PromptFormatError(f"{path}: a compressed PNG text chunk is damaged") from None
    if len(out) > MAX_TEXT_CHUNK_BYTES or inflater.unconsumed_tail:
        raise PromptFormatError(
            f"{path}: a compressed PNG text chunk unpacks to more than {MAX_TEXT_CHUNK_BYTES} bytes"
        )
    return out


def _charx_card_json(path: Path) -> bytes:
    size = read_size(path)
    if size > MAX_CARD_FILE_BYTES:
        raise PromptFormatError(
            f"{path}: {size} bytes is far too large for a character card (limit {MAX_CARD_FILE_BYTES})"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > MAX_CHARX_ENTRIES:
                raise PromptFormatError(f"{path}: a CharX with {len(members)} files is not a card")
            for info in members:
                if not _safe_member(info.filename):
                    raise PromptFormatError(
                        f"{path}: the CharX holds an unsafe path {info.filename[:80]!r}; refused"
                    )
            if sum(info.file_size for info in members) > MAX_CHARX_UNPACKED:
                raise PromptFormatError(
                    f"{path}: the CharX says it unpacks to more than {MAX_CHARX_UNPACKED} bytes; refused"
                )
            try:
                info = archive.getinfo("card.json")
            except KeyError:
                raise PromptFormatError(f"{path}: a CharX without card.json at its root") from None
            if info.flag_bits & 0x1:
                raise PromptFormatError(f"{path}: the CharX is encrypted; persona reads plain zips")
            if info.file_size > MAX_CARD_JSON_BYTES:
                raise PromptFormatError(
                    f"{path}: card.json is {info.file_size} bytes (limit {MAX_CARD_JSON_BYTES})"
                )
            with archive.open(info) as member:
                data = member.read(MAX_CARD_JSON_BYTES + 1)  # the header's size may lie
    except PromptFormatError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, zlib.error):
        raise PromptFormatError(f"{path}: the CharX is not a readable zip") from None
    except OSError as exc:
        raise PromptFormatError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(data) > MAX_CARD_JSON_BYTES:
        raise PromptFormatError(
            f"{path}: card.json unpacks to more than {MAX_CARD_JSON_BYTES} bytes"
        )
    return data


def read_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise PromptFormatError(f"{path}: cannot read ({exc.strerror})") from None


def _safe_member(name: str) -> bool:
    """A zip member path that stays inside the archive's folder."""
    if (
        not name
        or "\\" in name
        or "\0" in name
        or name.startswith("/")
        or ":" in name.split("/")[0]
    ):
        return False
    return ".." not in PurePosixPath(name).parts


def _utf8(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PromptFormatError(f"{path}: the card is not UTF-8 text") from None


def _base64_json(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")
