"""`persona train` and `persona eval` as a user runs them (tiny model; a few steps each)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from persona.cli.main import main
from persona.library import open_library
from tests.helpers import REPLIES, train_args, write_log


def test_train_stores_a_version_with_its_metrics_and_a_second_run_adds_version_2(
    tmp_path, tiny_model_dir, capsys
) -> None:
    log = write_log(tmp_path)
    assert main(train_args(log, tiny_model_dir, "--description", "a bard")) == 0
    out = capsys.readouterr().out
    assert "no prompt" in out and "written description" in out and "deep prompt" in out
    assert "stored persona 'bob' version 1" in out

    assert main(train_args(log, tiny_model_dir)) == 0
    captured = capsys.readouterr()
    assert "persona 'bob' exists; adding version 2" in captured.err
    assert "stored persona 'bob' version 2" in captured.out

    library = open_library()
    try:
        versions = library.get_persona("bob").versions
        assert [v.version for v in versions] == [1, 2]
        first = versions[0]
        assert set(first.metrics) == {
            "nll",
            "interval",
            "difference",
            "tokens",
            "examples",
            "population",
        }
        assert set(first.metrics["nll"]) == {"no_prompt", "written_prompt", "persona"}
        assert first.training["speaker"] == "BOB" and first.training["steps"] == 3
        assert len(first.training["source_sha256"]) == 64
        prompt = library.get_prompt("bob", 1)
        assert prompt.init == "text" and prompt.base_model == str(tiny_model_dir)
    finally:
        library.close()


def test_eval_json_has_exactly_the_documented_shape(tmp_path, tiny_model_dir, capsys) -> None:
    log = write_log(tmp_path)
    assert main(train_args(log, tiny_model_dir, "--description", "a bard")) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "bob",
                str(log),
                "--speaker",
                "BOB",
                "--model",
                str(tiny_model_dir),
                "--json",
                "--style-sample",
                "none",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"nll", "interval", "difference", "tokens", "examples", "population"}
    assert set(result["nll"]) == {"no_prompt", "written_prompt", "persona"}
    assert all(isinstance(value, float) for value in result["nll"].values())
    assert result["examples"] == 24 and result["tokens"] > 24


def test_spec_file_trains_with_paths_relative_to_it_and_writes_the_prompt_file(
    tmp_path, tiny_model_dir, capsys
) -> None:
    write_log(tmp_path)
    spec = tmp_path / "bob.toml"
    spec.write_text(
        'name = "bob-spec"\nspeaker = "BOB"\ntrain = "bard.txt"\ndescription = "a bard"\nprompt_file = "bob.safetensors"\n'
        "[config]\nnum_virtual_tokens = 3\nsteps = 2\nbatch_size = 4\n",
        encoding="utf-8",
    )
    assert main(["train", "--spec", str(spec), "--model", str(tiny_model_dir), "--quiet"]) == 0
    from persona.prompt.softprompt import SoftPrompt

    saved = SoftPrompt.load(tmp_path / "bob.safetensors")
    assert saved.name == "bob-spec" and saved.num_virtual_tokens == 3
    assert saved.kind == "deep"  # the default kind

    # the same recipe under another name, as another kind: the recipe's own file is left alone
    again = ["train", "--spec", str(spec), "--model", str(tiny_model_dir), "--quiet"]
    capsys.readouterr()
    assert main([*again, "--name", "bob-soft", "--kind", "soft"]) == 0
    assert SoftPrompt.load(tmp_path / "bob.safetensors").sha256 == saved.sha256
    assert "prompt written" not in capsys.readouterr().out
    library = open_library()
    try:
        assert library.get_prompt("bob-soft").kind == "soft"
    finally:
        library.close()


def test_ctrl_c_leaves_no_persona_and_resume_finishes_it(
    tmp_path, tiny_model_dir, capsys, monkeypatch
) -> None:
    import persona.train.run as run

    real_loop = run.train_loop

    def interrupted_loop(*args, **kwargs):
        def press(step: int, loss: float) -> None:
            if step == 2:
                raise KeyboardInterrupt

        return real_loop(*args, **{**kwargs, "on_step": press})

    log = write_log(tmp_path)
    monkeypatch.setattr(run, "train_loop", interrupted_loop)
    assert main(train_args(log, tiny_model_dir)) == 130
    assert "training stopped after step 2/3" in capsys.readouterr().err
    library = open_library()
    assert not library.has_persona("bob")
    library.close()

    monkeypatch.setattr(run, "train_loop", real_loop)
    assert main(train_args(log, tiny_model_dir, "--resume")) == 0
    library = open_library()
    assert library.get_persona("bob").versions[0].training["steps"] == 3
    library.close()


@pytest.mark.parametrize(
    ("make_log", "extra", "message"),
    [
        (lambda p: p.write_text(""), [], "is empty"),
        (
            lambda p: p.write_text("ALICE: hi\nBOB: yo\nALICE: hey\n"),
            ["--speaker", "carol"],
            "speakers found (lines): ALICE (2), BOB (1)",
        ),
        (lambda p: p.write_text("ALICE: hi\nBOB: yo\n"), [], "only 1 line by 'BOB'"),
        (lambda p: p.write_bytes(b"ALICE: caf\xe9\nBOB: x\n"), [], "is not UTF-8 text"),
        (
            lambda p: p.write_text('{"speaker": "BOB", "text": "a"}\nnot json\n'),
            ["--format", "jsonl"],
            "line 2 is not valid JSON",
        ),
        (
            lambda p: p.write_text("who,said\nBOB,hi\n"),
            ["--format", "csv"],
            "no 'speaker' or 'text' column",
        ),
        (
            lambda p: p.write_text("BOB: hi\n"),
            ["--virtual-tokens", "0"],
            "--virtual-tokens (num_virtual_tokens) must be an integer between 1 and 512, got 0",
        ),
    ],
)
def test_bad_input_is_one_line_on_stderr_exit_1_and_no_persona(
    tmp_path, tiny_model_dir, capsys, make_log, extra, message
) -> None:
    log = tmp_path / "log.txt"
    make_log(log)
    args = [
        "train",
        str(log),
        "--speaker",
        "bob",
        "--name",
        "bob",
        "--model",
        str(tiny_model_dir),
        "--steps",
        "1",
        "--quiet",
        *extra,
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("persona: error: ") and err.count("\n") == 1
    assert message in err
    library = open_library()
    assert not library.has_persona("bob")
    library.close()


def test_the_command_modules_do_not_import_torch() -> None:
    code = "import sys; from persona.cli.main import build_parser; build_parser(); print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_eval_reproduces_the_numbers_stored_at_training_with_the_same_settings(
    tmp_path, tiny_model_dir, capsys
) -> None:
    log = write_log(tmp_path)
    args = train_args(
        log,
        tiny_model_dir,
        "--description",
        "a bard",
        "--heldout",
        str(log),
        "--context-turns",
        "1",
    )
    assert main(args) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "bob",
                str(log),
                "--speaker",
                "BOB",
                "--model",
                str(tiny_model_dir),
                "--json",
                "--style-sample",
                "none",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    library = open_library()
    stored = library.get_persona("bob").versions[0].metrics
    library.close()
    assert result["tokens"] == stored["tokens"] and result["examples"] == stored["examples"]
    for key, value in stored["nll"].items():
        assert result["nll"][key] == pytest.approx(value, abs=1e-5)


def test_chat_export_jsonl_learns_the_assistant_when_no_speaker_is_given(
    tmp_path, tiny_model_dir, capsys
) -> None:
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"question {i}"},
                    {"role": "assistant", "content": REPLIES[i % 2]},
                ]
            }
        )
        for i in range(14)
    ]
    log = tmp_path / "export.jsonl"
    log.write_text("\n".join(lines), encoding="utf-8")
    args = [
        "train",
        str(log),
        "--name",
        "helper",
        "--model",
        str(tiny_model_dir),
        "--steps",
        "1",
        "--virtual-tokens",
        "2",
        "--quiet",
    ]
    assert main(args) == 0
    library = open_library()
    assert library.get_persona("helper").versions[0].training["speaker"] == "assistant"
    library.close()


def test_the_style_measure_lets_a_cpu_training_model_go_and_keeps_one_elsewhere() -> None:
    """On the CPU the style measure loads persona's own decoder: the training model is dropped
    first, so the run never holds both (its peak memory); elsewhere it is the style engine."""
    import torch

    from persona.cli.train_cmds import _style_source

    class Loaded:
        def __init__(self, device: str) -> None:
            self.model = torch.nn.Linear(2, 2, device=device)

    assert _style_source(Loaded("cpu")) is None
    elsewhere = Loaded("meta")
    assert _style_source(elsewhere) is elsewhere


def test_the_training_model_is_gone_before_the_style_engine_loads(
    tmp_path, tiny_model_dir, capsys, monkeypatch
) -> None:
    """The start freezes every object out of the collector's reach once the model is loaded
    (persona.cli.startup); the training model's cycles must still be collected before the style
    measure loads its own engine, or the run holds both (its peak memory)."""
    import weakref

    import persona.model.loader as loader

    real = loader.load_model
    models: list[weakref.ref] = []

    def recording(*args, **kwargs):
        if models:  # the style engine's load
            assert models[0]() is None, "the training model is still alive"
        loaded = real(*args, **kwargs)
        models.append(weakref.ref(loaded.model))
        cycle: list = [loaded.model]  # held by a reference cycle alone once the run drops it,
        cycle.append(cycle)  # as the default model's modules are: only the collector frees it
        return loaded

    monkeypatch.setattr(loader, "load_model", recording)
    log = write_log(tmp_path)
    assert main(train_args(log, tiny_model_dir, "--style-sample", "4")) == 0
    assert len(models) == 2  # training, then the style measure
