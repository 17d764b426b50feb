"""Inputs the fuzzers found crashing a reader with something other than a one-line PersonaError.

Each is kept here as a plain test so the fix stays fixed whatever the fuzzers draw next time.
"""

from __future__ import annotations

import io
import json
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as st_save

from persona.dialogue import build_examples, read_dialogue
from persona.errors import DialogueError, ModelError, PromptFormatError
from persona.formats import read_prompt
from persona.formats.fit import model_width
from persona.library import open_library
from persona.prompt.softprompt import SoftPrompt
from tests.fuzz.harness import assert_one_line
from tests.library_helpers import make_prompt


def test_a_log_with_bare_carriage_returns_is_sniffed_not_crashed(tmp_path: Path) -> None:
    path = tmp_path / "mac.txt"
    path.write_bytes(b"---\rALICE: hello\nBOB: hi\n")
    dialogue = read_dialogue(path)  # sniffing once raised csv.Error on the bare \r
    assert dialogue.num_turns == 1


def test_a_deeply_nested_jsonl_line_is_refused_naming_its_line(tmp_path: Path) -> None:
    path = tmp_path / "deep.jsonl"
    path.write_text('{"speaker": "A", "text": "hi"}\n' + '{"a":' * 100_000 + "\n")
    with pytest.raises(DialogueError, match="line 2 nests JSON too deeply") as exc:
        read_dialogue(path, "jsonl")  # once a RecursionError
    assert_one_line(str(exc.value))


def test_content_parts_whose_text_is_not_a_string_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "parts.jsonl"
    parts = [{"type": "text", "text": 5}, {"type": "text", "text": "kept"}, {"type": "image"}]
    path.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": parts},
                    {"role": "assistant", "content": "ok"},
                ]
            }
        )
        + "\n"
    )
    dialogue = read_dialogue(path)  # once a TypeError from str.join
    assert [turn.text for turn in dialogue.conversations[0].turns] == ["kept", "ok"]


def test_speaker_names_with_control_characters_are_escaped_in_messages(tmp_path: Path) -> None:
    path = tmp_path / "cr.txt"
    path.write_bytes(b"\xc2\xb9\rALICE: hi\nB\x1b[2JOB: there\n")
    dialogue = read_dialogue(path, "txt")
    with pytest.raises(DialogueError) as exc:
        build_examples(dialogue, "carol")
    message = str(exc.value)
    assert_one_line(message)  # a \r or an escape sequence once reached the terminal as is
    assert r"'¹\rALICE' (1)" in message and r"'B\x1b[2JOB' (1)" in message


def kobold_zip(
    path: Path, tensor: bytes, meta: bytes = b"{}", compression: int = zipfile.ZIP_STORED
) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        archive.writestr("tensor.npy", tensor)
        archive.writestr("meta.json", meta)
    return path


def npy(shape_text: str = "(2, 4)") -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((2, 4), np.float32), allow_pickle=False)
    return buffer.getvalue().replace(b"(2, 4)", shape_text.encode())


def test_a_npy_header_claiming_a_huge_array_is_refused_before_numpy_allocates_it(
    tmp_path: Path,
) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(
            PromptFormatError, match=r"claims shape \(100000, 100000\) but holds \d+ bytes"
        ) as exc:
            read_prompt(
                kobold_zip(tmp_path / "big.zip", npy("(100000, 100000)"))
            )  # once a MemoryError (37 GiB)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert_one_line(str(exc.value))
    assert peak < 16 * 1024 * 1024


@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_LZMA, zipfile.ZIP_BZIP2])
def test_a_zip_whose_compressed_data_is_corrupt_is_refused_in_one_line(
    tmp_path: Path, compression: int
) -> None:
    path = kobold_zip(tmp_path / "bent.zip", npy() * 20, compression=compression)
    data = bytearray(path.read_bytes())
    start = data.find(b"tensor.npy") + len("tensor.npy")
    for position in range(start + 8, start + 40):
        data[position] ^= 0x55  # once zlib.error / LZMAError escaped
    path.write_bytes(bytes(data))
    with pytest.raises(PromptFormatError, match="damaged|not a valid|cannot read") as exc:
        read_prompt(path)
    assert_one_line(str(exc.value))


def test_a_zip_member_with_an_undecodable_utf8_name_is_refused(tmp_path: Path) -> None:
    path = kobold_zip(tmp_path / "names.zip", npy())
    data = bytearray(path.read_bytes())
    for header in (
        b"PK\x03\x04",
        b"PK\x01\x02",
    ):  # set the UTF-8 flag on every entry, then break the name
        at = data.find(header)
        while at != -1:
            flag_at = at + (6 if header == b"PK\x03\x04" else 8)
            data[flag_at] |= 0x08
            at = data.find(header, at + 4)
    name_at = data.rfind(b"tensor.npy")
    data[name_at] = 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(PromptFormatError) as exc:
        read_prompt(path)  # once a UnicodeDecodeError
    assert_one_line(str(exc.value))


@pytest.mark.parametrize(
    "fingerprint",
    [
        '{"architecture": "a", "hidden_size": 1e999, "vocab_size": 1, "embedding_sha256": "x"}',
        "[" * 100_000,
    ],
)
def test_a_fingerprint_with_an_infinite_width_or_deep_nesting_is_refused(fingerprint: str) -> None:
    data = st_save({"prompt_embeddings": torch.zeros(2, 4)}, metadata={"fingerprint": fingerprint})
    with pytest.raises(PromptFormatError, match="unreadable model fingerprint") as exc:
        SoftPrompt.from_bytes(data)  # once OverflowError / RecursionError
    assert_one_line(str(exc.value))


def test_safetensors_and_json_headers_nested_thousands_deep_are_refused(tmp_path: Path) -> None:
    deep = b"[" * 100_000
    with pytest.raises(PromptFormatError, match="broken safetensors file"):
        SoftPrompt.from_bytes(struct.pack("<Q", len(deep)) + deep)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_bytes(deep)
    with pytest.raises(PromptFormatError, match="not valid JSON"):
        read_prompt(adapter)
    with pytest.raises(PromptFormatError, match="meta.json is not valid JSON"):
        read_prompt(kobold_zip(tmp_path / "deep.zip", npy(), meta=deep))


@pytest.mark.parametrize("config", ["[1, 2]", '"a string"', "[" * 100_000])
def test_a_model_config_that_is_not_an_object_is_a_model_error(tmp_path: Path, config: str) -> None:
    (tmp_path / "config.json").write_text(config)
    with pytest.raises(ModelError) as exc:
        model_width(tmp_path)  # once AttributeError: 'list' object has no attribute 'get'
    assert_one_line(str(exc.value))


def test_an_id_or_version_beyond_64_bits_is_not_found_not_a_crash(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from persona.cli.main import main

    library = tmp_path / "library.db"
    lib = open_library(library)
    lib.add_version("hamlet", make_prompt())
    lib.close()
    huge = str(10**23)
    for argv in (
        ["history", huge],
        ["rollback", "hamlet", huge],
        ["export", "hamlet", str(tmp_path / "x"), "--version", huge],
    ):
        assert (
            main([argv[0], "--library", str(library), *argv[1:]]) == 1
        )  # once OverflowError from sqlite3
        err = capsys.readouterr().err
        assert err.startswith("persona: error: no such id or version") and err.count("\n") == 1


def test_control_characters_in_a_path_are_escaped_in_the_error_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from persona.cli.main import main

    assert main(["import", str(tmp_path / "evil\x1b[2J\rname")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and "\r" not in err
    assert r"evil\x1b[2J\rname: no such file" in err


def test_importing_a_path_too_long_for_the_file_system_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(PromptFormatError, match="cannot read") as exc:
        read_prompt(tmp_path / ("x" * 300))  # once OSError: File name too long, from Path.exists
    assert_one_line(str(exc.value))
