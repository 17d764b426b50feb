"""A persona trained with its description as the system message keeps it wherever it speaks, and
is scored that way; the style report measured after training is stored with the version."""

from __future__ import annotations

import json

import pytest

from persona.cli.main import main
from persona.library import open_library
from persona.prompt.render import Renderer
from persona.prompt.softprompt import SoftPrompt
from tests.helpers import train_args, write_log
from tests.library_helpers import make_prompt

DESCRIPTION = "You are Bob, a bard of few words."


def with_system(prompt: SoftPrompt, system: str) -> SoftPrompt:
    return SoftPrompt(
        prompt.embeddings,
        name=prompt.name,
        description=prompt.description,
        fingerprint=prompt.fingerprint,
        system=system,
    )


def test_the_system_text_a_prompt_was_trained_under_survives_its_file() -> None:
    prompt = with_system(make_prompt(), DESCRIPTION)
    again = SoftPrompt.from_bytes(prompt.to_bytes())
    assert again.system == DESCRIPTION and "system" not in again.extra
    assert SoftPrompt.from_bytes(make_prompt().to_bytes()).system == ""


def test_the_renderer_opens_with_the_trained_system_text_and_adds_a_written_one(tiny) -> None:
    renderer = Renderer(tiny.tokenizer)
    turn = [{"role": "user", "content": "hi"}]
    plain = make_prompt(width=tiny.fingerprint.hidden_size)
    described = with_system(plain, DESCRIPTION)
    assert renderer.conversation(turn, plain) == [{"role": "system", "content": ""}, *turn]
    assert renderer.conversation(turn, described) == [
        {"role": "system", "content": DESCRIPTION},
        *turn,
    ]
    both = renderer.conversation(turn, described, system="Answer in French.")
    assert both[0] == {"role": "system", "content": f"{DESCRIPTION}\n\nAnswer in French."}
    own = renderer.conversation([{"role": "system", "content": "Be brief."}, *turn], described)
    assert own[0]["content"] == f"{DESCRIPTION}\n\nBe brief."
    # training renders the same tokens as chat: the name marker with the description as system
    assert renderer.render(turn, "bob", system=DESCRIPTION) == renderer.render(turn, described)


def test_training_by_default_keeps_the_description_as_system_and_eval_scores_it_so(
    tmp_path, tiny_model_dir, capsys
) -> None:
    log = write_log(tmp_path)
    args = train_args(
        log,
        tiny_model_dir,
        "--description",
        DESCRIPTION,  # the description is the system message by default
        "--heldout",
        str(log),
    )
    assert main(args) == 0
    capsys.readouterr()
    library = open_library()
    try:
        prompt = library.get_prompt("bob")
        stored = library.get_persona("bob").versions[0]
    finally:
        library.close()
    assert prompt.system == DESCRIPTION
    assert stored.training["config"]["description_as_system"] is True
    assert main(["show", "bob"]) == 0
    assert "system:      the description, as trained" in capsys.readouterr().out
    evaluate = ["eval", "bob", str(log), "--speaker", "BOB", "--model", str(tiny_model_dir)]
    assert main([*evaluate, "--json", "--style-sample", "none"]) == 0
    result = json.loads(capsys.readouterr().out)
    # eval renders the prompt under its system text, as training did: the same numbers
    assert result["nll"]["persona"] == pytest.approx(stored.metrics["nll"]["persona"], abs=1e-5)
    assert result["nll"]["written_prompt"] != pytest.approx(result["nll"]["persona"], abs=1e-3)

    plain = train_args(log, tiny_model_dir, "--description", DESCRIPTION)
    assert main([*plain, "--no-description-as-system"]) == 0
    library = open_library()
    try:
        assert library.get_prompt("bob").system == ""  # turned off: the empty system message
    finally:
        library.close()
    assert main(train_args(log, tiny_model_dir)) == 0  # no description: nothing to say
    library = open_library()
    try:
        assert library.get_prompt("bob").system == ""
    finally:
        library.close()


def test_training_measures_style_after_storing_and_show_prints_it(
    tmp_path, tiny_model_dir, capsys
) -> None:
    log = write_log(tmp_path)
    args = train_args(log, tiny_model_dir, "--description", DESCRIPTION)
    args[args.index("--style-sample") + 1] = "2"
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "stored persona 'bob' version 1" in out and "style (2 held-out contexts" in out
    library = open_library()
    try:
        style = library.get_persona("bob").versions[0].metrics["style"]
    finally:
        library.close()
    assert style["sample_size"] == 2 and style["negatives"] == 16
    assert set(style["share"]) == {"no_prompt", "written_prompt", "persona"}
    assert main(["show", "bob"]) == 0
    shown = capsys.readouterr().out
    assert "style:" in shown and "names itself: as Bob when asked who it is: no_prompt " in shown


def test_set_metrics_adds_keys_and_keeps_the_others() -> None:
    library = open_library()
    try:
        info = library.add_version("voice", make_prompt(), metrics={"nll": {"persona": 1.0}})
        library.set_metrics("voice", info.version, {"style": {"share": {}}})
        metrics = library.get_persona("voice").versions[0].metrics
    finally:
        library.close()
    assert metrics == {"nll": {"persona": 1.0}, "style": {"share": {}}}


@pytest.mark.parametrize("fmt, target", [("persona", "v.safetensors"), ("peft", "v-adapter")])
def test_export_keeps_the_system_text_or_says_where_it_must_go(fmt, target, tmp_path, capsys):
    library = open_library()
    try:
        library.add_version("voice", with_system(make_prompt(), DESCRIPTION))
    finally:
        library.close()
    path = tmp_path / target
    assert main(["export", "voice", str(path), "--format", fmt]) == 0
    err = capsys.readouterr().err
    if fmt == "persona":
        assert SoftPrompt.load(path).system == DESCRIPTION and err == ""
        assert main(["import", str(path), "--name", "again"]) == 0
        library = open_library()
        try:
            assert library.get_prompt("again").system == DESCRIPTION
        finally:
            library.close()
    else:
        assert (
            err.count("\n") == 1 and f"system prompt where the file is used: {DESCRIPTION}" in err
        )


def test_written_example_exchanges_join_the_training_examples_only(tmp_path, tiny) -> None:
    from persona.dialogue.sources import read_source
    from persona.train.config import TrainConfig
    from persona.train.run import train_persona

    dialogue = read_source(str(write_log(tmp_path)))
    settings = {"epochs": 1.0, "batch_size": 8, "validation_fraction": 0.0, "example_repeats": 8}

    def train(written):
        return train_persona(
            tiny,
            dialogue,
            speaker="BOB",
            name="bob",
            config=TrainConfig(num_virtual_tokens=2, **settings),
            heldout=dialogue,
            progress=False,
            written=written,
        )

    plain = train(None)
    taught = train([("Who is this?", "Bob, the bard.")])
    assert plain.training["steps"] == 3  # 24 lines of BOB, 8 a step
    assert taught.training["steps"] == 4  # and the exchange 8 times: one step more
    assert taught.training["written_examples"] == 1
    assert taught.metrics["examples"] == plain.metrics["examples"]  # never held out
    assert len(taught.train_examples) == len(plain.train_examples)  # the style measure's lines


def test_a_spec_s_examples_must_be_question_reply_pairs(tmp_path) -> None:
    from persona.errors import ConfigError
    from persona.train.spec import load_spec

    spec = tmp_path / "p.toml"
    base = 'name = "p"\nspeaker = "P"\ntrain = "log.txt"\n'
    spec.write_text(base + 'examples = [["Who is this?", "P."]]\n', encoding="utf-8")
    assert load_spec(spec).examples == [("Who is this?", "P.")]
    spec.write_text(base + 'examples = [["only a question"]]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[question, reply\] pairs"):
        load_spec(spec)


def test_the_command_line_defaults_are_the_measures_own() -> None:
    """train_cmds copies a few facts so that `persona --help` needs no torch; they must not drift."""
    from persona.cli import train_cmds
    from persona.prompt.deep import KINDS
    from persona.style.report import StyleConfig
    from persona.train.config import SCHEDULES
    from persona.train.evaluate import DEFAULT_EVAL_SAMPLE

    assert train_cmds.DEFAULT_EVAL_SAMPLE == DEFAULT_EVAL_SAMPLE
    assert train_cmds.DEFAULT_STYLE_SAMPLE == StyleConfig().sample
    assert train_cmds.PROMPT_KINDS == KINDS
    assert train_cmds.LR_SCHEDULES == SCHEDULES
