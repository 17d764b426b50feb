"""Hostile files: nothing a user gives is unpickled or runs code, archives cannot escape or explode,
and what persona writes is readable by its owner alone."""

from __future__ import annotations

import io
import os
import pickle
import re
import shutil
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from persona.errors import ModelError, PromptFormatError
from persona.formats import read_prompt, write_prompt
from persona.formats.files import MAX_TENSOR_BYTES
from persona.library import open_library
from tests.library_helpers import make_prompt

PACKAGE = Path(__file__).resolve().parent.parent / "persona"
UNSAFE = re.compile(
    r"\bimport pickle\b|\bpickle\.loads?\(|torch\.load\(|allow_pickle\s*=\s*True|trust_remote_code\s*=\s*True|(?<![.\w])eval\(|(?<![.\w])exec\("
)


class Canary:
    """Unpickling this creates a file: proof that a pickle was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (open, (str(self.path), "w"))


def test_no_source_file_unpickles_or_trusts_remote_code() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if UNSAFE.search(line)
    ]
    assert offenders == []


def test_a_pickled_npy_in_a_kobold_zip_is_refused_and_never_unpickled(tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    buffer = io.BytesIO()
    np.save(buffer, np.array([Canary(canary)], dtype=object), allow_pickle=True)
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("tensor.npy", buffer.getvalue())
        archive.writestr("meta.json", "{}")
    with pytest.raises(PromptFormatError, match="holds Python objects"):
        read_prompt(path)
    assert not canary.exists()


def test_a_pickled_pytorch_file_or_adapter_is_refused_asking_for_safetensors(
    tmp_path: Path,
) -> None:
    canary = tmp_path / "pwned"
    for name, use_zip in (("voice.pt", True), ("voice.bin", False)):
        path = tmp_path / name
        torch.save(
            {"prompt_embeddings": torch.zeros(2, 4), "canary": Canary(canary)},
            path,
            _use_new_zipfile_serialization=use_zip,
        )
        with pytest.raises(PromptFormatError, match="pickle.*safetensors") as exc:
            read_prompt(path)
        assert "\n" not in str(exc.value)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        '{"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM"}'
    )
    shutil.copyfile(tmp_path / "voice.bin", adapter / "adapter_model.bin")
    with pytest.raises(PromptFormatError, match="pickle.*safe_serialization=True"):
        read_prompt(adapter)
    assert not canary.exists()


@pytest.mark.parametrize(
    "member",
    ["../tensor.npy", "/tmp/tensor.npy", "..\\tensor.npy", "C:/tensor.npy", "a/../../tensor.npy"],
)
def test_zip_members_that_climb_out_are_refused_and_nothing_is_written(
    tmp_path: Path, member: str
) -> None:
    path = tmp_path / "climb.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, b"x")
        archive.writestr("tensor.npy", b"x")
    before = sorted(p.name for p in tmp_path.parent.iterdir())
    with pytest.raises(PromptFormatError, match="outside the archive"):
        read_prompt(path)
    assert sorted(p.name for p in tmp_path.parent.iterdir()) == before


def test_a_zip_bomb_is_refused_whether_its_header_tells_the_truth_or_lies(tmp_path: Path) -> None:
    honest = tmp_path / "bomb.zip"
    with zipfile.ZipFile(honest, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("tensor.npy", "w", force_zip64=True) as member:
            chunk = b"\0" * (1024 * 1024)
            for _ in range(
                MAX_TENSOR_BYTES // len(chunk) + 8
            ):  # 72 MiB of zeros, ~70 KiB compressed
                member.write(chunk)
    assert honest.stat().st_size < 1024 * 1024
    with pytest.raises(PromptFormatError, match="far too large"):
        read_prompt(honest)
    data = bytearray(honest.read_bytes())  # now make every size field claim 100 bytes
    real = (MAX_TENSOR_BYTES + 8 * 1024 * 1024).to_bytes(8, "little")
    assert real in data
    data = data.replace(real, (100).to_bytes(8, "little"))
    liar = tmp_path / "liar.zip"
    liar.write_bytes(bytes(data))
    with pytest.raises(PromptFormatError, match="damaged|larger than|far too large"):
        read_prompt(liar)


def test_trust_remote_code_is_never_taken_from_a_model_directory(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    import json

    from persona.model.loader import load_model

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    canary = tmp_path / "pwned"
    (model / "evil.py").write_text(
        f"open({str(canary)!r}, 'w')\nfrom transformers import LlamaForCausalLM as EvilModel\n"
    )
    config = json.loads((model / "config.json").read_text())
    config.update(
        auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"},
        trust_remote_code=True,
    )
    (model / "config.json").write_text(json.dumps(config))
    try:
        load_model(model)  # loading the plain Llama weights is fine; running evil.py is not
    except ModelError:
        pass
    assert not canary.exists()


def test_a_model_directory_with_only_pickled_weights_is_refused(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from persona.model.loader import load_model

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    from safetensors.torch import load_file

    state = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    canary = tmp_path / "pwned"
    torch.save({**state, "canary": Canary(canary)}, model / "pytorch_model.bin")
    with pytest.raises(ModelError, match="safetensors"):
        load_model(model)
    assert not canary.exists()


def test_the_library_exports_checkpoints_and_backups_are_owner_only(
    tmp_path: Path, isolated_home: Path
) -> None:
    previous = os.umask(0o022)  # a typical umask: group and others could read new files
    try:
        lib = open_library()
        lib.add_version("hamlet", make_prompt())
        lib.close()
        prompt = make_prompt()
        exported = [
            write_prompt(prompt, tmp_path / "a.safetensors"),
            write_prompt(prompt, tmp_path / "a.zip", "kobold"),
            *sorted(write_prompt(prompt, tmp_path / "adapter", "peft").iterdir()),
        ]
        from persona.doctor import back_up
        from persona.train.checkpoint import Checkpoint, checkpoint_path, save_checkpoint

        checkpoint = save_checkpoint(
            checkpoint_path("hamlet"),
            Checkpoint(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 4), 0.0, 0, {}),
        )
        library = isolated_home / "library.db"
        files = [
            library,
            *library.parent.glob("library.db-*"),
            *exported,
            checkpoint,
            back_up(library),
        ]
    finally:
        os.umask(previous)
    modes = {str(path): oct(stat.S_IMODE(path.stat().st_mode)) for path in files}
    assert all(mode == "0o600" for mode in modes.values()), modes
    for folder in (isolated_home, tmp_path / "adapter", checkpoint.parent):
        assert stat.S_IMODE(folder.stat().st_mode) & 0o077 == 0, folder
    _ = pickle  # the Canary class pickles through this module's import
