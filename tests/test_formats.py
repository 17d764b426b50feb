"""Soft-prompt files: exact round trips for each format, detection, and hostile or broken input."""

from __future__ import annotations

import errno
import io
import json
import os
import stat
import struct
import zipfile

import numpy as np
import pytest
import torch

from persona.errors import AlreadyExistsError, LibraryError, PromptFormatError, PromptMismatchError
from persona.formats import detect_format, read_prompt, write_prompt
from persona.formats import kobold as kobold_format
from tests.library_helpers import FINGERPRINT, make_prompt

TARGETS = {"persona": "voice.safetensors", "peft": "voice-adapter", "kobold": "voice.zip"}


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def make_zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


@pytest.mark.parametrize("fmt", sorted(TARGETS))
def test_each_format_round_trips_exactly_and_is_detected(tmp_path, fmt):
    prompt = make_prompt(seed=4)
    path = write_prompt(prompt, tmp_path / TARGETS[fmt], fmt)
    assert detect_format(path) == fmt
    loaded = read_prompt(path)
    assert torch.equal(loaded.embeddings, prompt.embeddings)
    assert (loaded.name, loaded.description, loaded.fingerprint, loaded.base_model) == (
        "voice",
        "voice 4",
        FINGERPRINT,
        "tiny-llama",
    )
    files = [path] if path.is_file() else list(path.iterdir())
    assert all(stat.S_IMODE(os.stat(f).st_mode) == 0o600 for f in files)


@pytest.mark.parametrize("fmt", sorted(TARGETS))
def test_export_refuses_to_overwrite_unless_forced(tmp_path, fmt):
    path = write_prompt(make_prompt(seed=1), tmp_path / TARGETS[fmt], fmt)
    with pytest.raises(
        AlreadyExistsError, match="already exists; choose another path or pass --force"
    ):
        write_prompt(make_prompt(seed=2), path, fmt)
    write_prompt(make_prompt(seed=2), path, fmt, force=True)
    assert torch.equal(read_prompt(path).embeddings, make_prompt(seed=2).embeddings)


@pytest.mark.parametrize("fmt", sorted(TARGETS))
def test_a_disk_that_fills_during_export_leaves_nothing_behind(tmp_path, fmt, monkeypatch):
    def full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("persona.prompt.softprompt.os.fsync", full)
    with pytest.raises(LibraryError, match="the disk is full; free some space"):
        write_prompt(make_prompt(), tmp_path / TARGETS[fmt], fmt)
    assert list(tmp_path.iterdir()) == []


def test_kobold_float16_imports_exactly_with_its_meta(tmp_path):
    array = np.random.default_rng(0).standard_normal((6, 32)).astype(np.float16)  # (N, D)
    meta = {
        "name": "Sir Toby",
        "author": "someone",
        "supported": ["KoboldAI/fairseq-dense-125M"],
        "description": "belch",
    }
    path = make_zip(
        tmp_path / "toby.zip",
        {"tensor.npy": npy_bytes(array), "meta.json": json.dumps(meta).encode()},
    )
    prompt = read_prompt(path)
    assert torch.equal(prompt.embeddings, torch.from_numpy(array.astype(np.float32)))
    assert (prompt.name, prompt.description, prompt.base_model) == (
        "Sir Toby",
        "belch",
        "KoboldAI/fairseq-dense-125M",
    )


@pytest.mark.parametrize(
    "member", ["../tensor.npy", "/etc/tensor.npy", "a/../../tensor.npy", "C:\\tensor.npy"]
)
def test_kobold_zip_members_that_climb_out_are_refused(tmp_path, member):
    path = make_zip(tmp_path / "evil.zip", {member: npy_bytes(np.zeros((2, 32), np.float32))})
    with pytest.raises(PromptFormatError, match="points outside the archive"):
        read_prompt(path)


def test_kobold_huge_member_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(kobold_format, "MAX_TENSOR_BYTES", 4096)
    path = make_zip(
        tmp_path / "big.zip", {"tensor.npy": npy_bytes(np.zeros((100, 32), np.float32))}
    )  # 12.9 KB
    with pytest.raises(PromptFormatError, match="far too large"):
        read_prompt(path)


def test_kobold_zip_without_tensor_is_refused(tmp_path):
    path = make_zip(tmp_path / "empty.zip", {"meta.json": b"{}"})
    with pytest.raises(PromptFormatError, match="no tensor.npy in the zip"):
        read_prompt(path)


class _Trap:
    """Unpickling this would create a file: proof that nothing was unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_kobold_object_dtype_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    array = np.empty((1, 1), dtype=object)
    array[0, 0] = _Trap(str(marker))
    path = make_zip(tmp_path / "pickle.zip", {"tensor.npy": npy_bytes(array, allow_pickle=True)})
    with pytest.raises(PromptFormatError, match="object dtype"):
        read_prompt(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "array, match",
    [
        (np.zeros((4, 32), np.int32), "dtype int32; expected float16 or float32"),
        (np.zeros((2, 4, 32), np.float32), "expected \\(num_virtual_tokens, hidden_size\\)"),
    ],
)
def test_kobold_wrong_dtype_or_shape_is_refused(tmp_path, array, match):
    path = make_zip(tmp_path / "odd.zip", {"tensor.npy": npy_bytes(array)})
    with pytest.raises(PromptFormatError, match=match):
        read_prompt(path)


def test_a_safetensors_file_with_a_broken_header_is_refused(tmp_path):
    good = make_prompt().to_bytes()
    lying = tmp_path / "lying.safetensors"
    lying.write_bytes(struct.pack("<Q", 10**12) + good[8:])
    garbled = tmp_path / "garbled.safetensors"
    garbled.write_bytes(good[:8] + b"{not json" + good[17:])
    for path in (lying, garbled):
        with pytest.raises(PromptFormatError, match="safetensors"):
            read_prompt(path)


def test_a_file_whose_recorded_model_has_another_width_is_refused(tmp_path):
    prompt = make_prompt(width=16)
    prompt.fingerprint = FINGERPRINT  # says hidden size 32
    path = prompt.save(tmp_path / "mislabelled.safetensors")
    with pytest.raises(
        PromptMismatchError, match="has width 16 but records a model of hidden size 32"
    ):
        read_prompt(path)


def test_unknown_files_and_directories_are_refused(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(PromptFormatError, match="not a soft prompt persona can read"):
        read_prompt(text)
    with pytest.raises(PromptFormatError, match="without adapter_config.json"):
        read_prompt(tmp_path)
    with pytest.raises(PromptFormatError, match="no such file"):
        read_prompt(tmp_path / "missing.zip")


def _adapter(
    tmp_path,
    config: dict,
    weights: bytes | None = None,
    weights_name: str = "adapter_model.safetensors",
):
    directory = tmp_path / "adapter"
    directory.mkdir()
    (directory / "adapter_config.json").write_text(json.dumps(config))
    if weights is not None:
        (directory / weights_name).write_bytes(weights)
    return directory


def test_peft_adapters_that_are_not_prompt_tuning_or_pickled_are_refused(tmp_path):
    lora = _adapter(tmp_path, {"peft_type": "LORA", "task_type": "CAUSAL_LM"})
    with pytest.raises(PromptFormatError, match="'LORA' PEFT adapter, not PROMPT_TUNING"):
        read_prompt(lora)
    (lora / "adapter_config.json").write_text(
        json.dumps({"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM"})
    )
    (lora / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(
        PromptFormatError, match="pickle .adapter_model.bin., which persona never loads"
    ):
        read_prompt(lora)


def test_peft_adapter_whose_tensor_contradicts_its_config_is_refused(tmp_path):
    config = {
        "peft_type": "PROMPT_TUNING",
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": 5,
        "token_dim": 64,
    }
    directory = _adapter(tmp_path, config, make_prompt().to_bytes())
    with pytest.raises(
        PromptFormatError,
        match=r"shape \(5, 32\) but adapter_config.json says num_virtual_tokens=5, token_dim=64",
    ):
        read_prompt(directory)
