"""The style measure at the command line: its flag's values, and `persona show` of a stored report."""

from __future__ import annotations

import pytest

from persona.cli.main import main
from persona.library import open_library
from tests.library_helpers import make_prompt


def test_show_prints_the_stored_style_share(capsys) -> None:
    style = {"share": {"no_prompt": [0.0, 0.0, 0.11], "persona": [0.5, 0.33, 0.67]}}
    library = open_library()
    try:
        library.add_version("voice", make_prompt(), metrics={"nll": {}, "style": style})
    finally:
        library.close()
    assert main(["show", "voice"]) == 0
    out = capsys.readouterr().out
    assert "style:" in out and "no_prompt 0% [0%, 11%]" in out and "persona 50% [33%, 67%]" in out


@pytest.mark.parametrize("value", ["0", "-3", "some"])
def test_eval_refuses_a_style_sample_that_is_not_a_count_or_full(value: str, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["eval", "voice", "log.txt", "--style-sample", value])
    assert stop.value.code == 2
    assert "--style-sample" in capsys.readouterr().err


def test_a_style_measure_that_fails_leaves_the_trained_persona_stored_and_says_so(
    tmp_path, tiny_model_dir, capsys, monkeypatch
) -> None:
    from persona.cli import train_cmds
    from persona.errors import ModelError
    from tests.helpers import train_args, write_log

    def failing(*args, **kwargs):
        raise ModelError("the reply model could not be loaded")

    monkeypatch.setattr(train_cmds, "_style_report", failing)
    args = train_args(write_log(tmp_path), tiny_model_dir)
    args[args.index("--style-sample") + 1] = "4"
    assert main(args) == 0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "warning: the style measure failed (the reply model could not be loaded)" in err
    assert "'bob' version 1 is stored without it" in err
    library = open_library()
    try:
        assert "style" not in (library.get_persona("bob").versions[0].metrics or {})
    finally:
        library.close()
