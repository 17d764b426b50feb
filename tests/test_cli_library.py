"""The library commands as a user runs them: output, JSON, exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest
import torch

from persona.library import open_library
from tests.helpers import assert_one_line_error, run
from tests.library_helpers import FINGERPRINT, METRICS, TRAINING, make_prompt


def test_list_and_show_plain_and_json(capsys, library):
    code, out, _ = run(capsys, "list", "--library", str(library))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["NAME", "VER", "PROMPT"]
    assert (
        lines[1].split()[:3] == ["hamlet", "2", "5x32"]
        and "2.25 (none 3.50)" in lines[1]
        and "tragic" in lines[1]
    )
    assert lines[2].split()[:3] == ["ophelia", "1", "8x32"]
    code, out, _ = run(capsys, "list", "--json", "--library", str(library))
    listed = json.loads(out)
    assert [p["name"] for p in listed] == ["hamlet", "ophelia"] and listed[0]["metrics"] == METRICS

    code, out, _ = run(capsys, "show", "Hamlet", "--library", str(library))
    assert code == 0 and "hamlet  (version 2 of 2)" in out and "the prince" in out
    assert (
        f"fingerprint: {FINGERPRINT}" in out and "HAMLET" not in out
    )  # the training record is version 1's
    code, out, _ = run(capsys, "show", "hamlet", "--json", "--library", str(library))
    shown = json.loads(out)
    assert [v["version"] for v in shown["versions"]] == [1, 2] and shown["versions"][0][
        "training"
    ] == TRAINING


def test_an_empty_library_says_how_to_fill_it(capsys, tmp_path):
    code, out, _ = run(capsys, "list", "--library", str(tmp_path / "new.db"))
    assert code == 0 and "no personas yet" in out


def test_rename_rollback_and_delete(capsys, library):
    assert run(capsys, "rename", "ophelia", "Ophelia", "--library", str(library))[0] == 0
    code, out, _ = run(capsys, "rollback", "hamlet", "--library", str(library))
    assert code == 0 and "now uses version 1 of 2" in out
    code, _, err = run(capsys, "rollback", "hamlet", "--library", str(library))
    assert_one_line_error(code, err, "already at its oldest version")
    code, _, err = run(
        capsys, "delete", "Ophelia", "--library", str(library)
    )  # stdin is not a terminal
    assert_one_line_error(code, err, "pass --yes")
    assert run(capsys, "delete", "Ophelia", "--yes", "--library", str(library))[0] == 0
    lib = open_library(library)
    assert [p.name for p in lib.list_personas()] == ["hamlet"]
    assert lib.get_persona("hamlet").active_version == 1
    assert lib.get_messages(1)[2].persona == "ophelia"  # the history keeps who said it
    lib.close()


def test_unknown_names_get_one_line_with_a_suggestion(capsys, library):
    code, _, err = run(capsys, "show", "hamlte", "--library", str(library))
    assert_one_line_error(code, err, "no persona named 'hamlte'; did you mean 'hamlet'?")
    code, _, err = run(capsys, "rename", "hamlet", "ophelia", "--library", str(library))
    assert_one_line_error(code, err, "'ophelia' already exists")


@pytest.mark.parametrize(
    "fmt, target", [("persona", "h.safetensors"), ("peft", "h-adapter"), ("kobold", "h.zip")]
)
def test_export_then_import_is_exact(capsys, library, tmp_path, fmt, target):
    path = tmp_path / target
    code, out, _ = run(
        capsys,
        "export",
        "hamlet",
        str(path),
        "--format",
        fmt,
        "--version",
        "1",
        "--library",
        str(library),
    )
    assert code == 0 and str(path) in out
    code, _, err = run(
        capsys, "import", str(path), "--library", str(library)
    )  # the file says "hamlet"
    assert_one_line_error(code, err, "a persona named 'hamlet' already exists; pass --name")
    code, out, _ = run(capsys, "import", str(path), "--name", "hamlet2", "--library", str(library))
    assert code == 0 and f"from {fmt} file" in out
    code, out, _ = run(capsys, "show", "hamlet2", "--library", str(library))
    assert f"imported:    from {path} ({fmt})" in out
    lib = open_library(library)
    assert torch.equal(lib.get_prompt("hamlet2").embeddings, lib.get_prompt("hamlet", 1).embeddings)
    assert lib.get_persona("hamlet2").fingerprint == str(FINGERPRINT)
    lib.close()


def test_import_refuses_a_prompt_that_does_not_fit_the_model(
    capsys, library, tmp_path, tiny_model_dir
):
    path = make_prompt(width=16).save(tmp_path / "narrow.safetensors")
    code, _, err = run(
        capsys, "import", str(path), "--model", str(tiny_model_dir), "--library", str(library)
    )
    assert_one_line_error(code, err, "has width 16 but the model", "hidden size 32")
    lib = open_library(library)
    assert [p.name for p in lib.list_personas()] == ["hamlet", "ophelia"]
    lib.close()


def test_import_of_a_broken_file_is_one_line(capsys, library, tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken header!!")
    code, _, err = run(capsys, "import", str(path), "--library", str(library))
    assert_one_line_error(code, err, "broken safetensors file")


def test_history_lists_conversations_and_their_messages(capsys, library):
    code, out, _ = run(capsys, "history", "--library", str(library))
    assert code == 0 and "the castle" in out and "hamlet, ophelia" in out
    code, out, _ = run(capsys, "history", "1", "--json", "--library", str(library))
    messages = json.loads(out)
    assert [(m["role"], m["content"], m["persona"]) for m in messages] == [
        ("user", "my lord?", None),
        ("assistant", "words, words, words", "hamlet"),
        ("assistant", "O, woe is me", "ophelia"),
    ]
    assert messages[2]["cut_short"] is True
    code, out, _ = run(capsys, "history", "1", "--library", str(library))
    assert "hamlet: words, words, words" in out and "[cut short]" in out
    code, _, err = run(capsys, "history", "7", "--library", str(library))
    assert_one_line_error(code, err, "no conversation with id 7")


def test_a_newer_library_is_refused_by_every_command(capsys, library):
    with sqlite3.connect(library) as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'zzzz_newer'")
    connection.close()
    for argv in (["list"], ["show", "hamlet"], ["rename", "hamlet", "x"], ["history"]):
        code, _, err = run(capsys, *argv, "--library", str(library))
        assert_one_line_error(code, err, "newer version of persona")


def test_read_commands_start_without_torch_or_sqlalchemy(library):
    probe = (
        "import sys; from persona.cli.main import main\n"
        f"for argv in (['list'], ['show', 'hamlet'], ['history'], ['history', '1']):\n"
        f"    assert main(argv + ['--library', {str(library)!r}]) == 0\n"
        "heavy = [m for m in ('torch', 'transformers', 'sqlalchemy', 'numpy') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stderr
