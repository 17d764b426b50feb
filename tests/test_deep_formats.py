"""Deep personas in the file formats: a PEFT PREFIX_TUNING adapter both ways (checked against the
real `peft` package), the fit check against a model directory, and the refusals."""

from __future__ import annotations

import json

import pytest
import torch

from persona.cli.main import main
from persona.engine.chat import ChatEngine
from persona.errors import PromptFormatError, PromptMismatchError
from persona.formats import read_prompt, write_prompt
from persona.formats.fit import check_width
from persona.library import open_library
from persona.prompt.deep import KVLayout, prefix_from_embeddings
from persona.prompt.softprompt import SoftPrompt
from tests.conftest import edited_copy

peft = pytest.importorskip("peft")

TINY_LAYOUT = KVLayout(layers=2, kv_heads=2, head_dim=8)  # the tiny Llama: 4 heads of 8, 2 KV heads
TEXTS = ["Hello there, how are you today?", "To be, or not"]


@pytest.fixture
def deep_prompt(tiny) -> SoftPrompt:
    """A deep prompt of 5 virtual tokens for the tiny model, with every kind of metadata."""
    generator = torch.Generator().manual_seed(4)
    start = torch.randn(5, tiny.model.config.hidden_size, generator=generator) * 0.5  # (5, D)
    return SoftPrompt(
        embeddings=prefix_from_embeddings(tiny.model, start),  # (5, W)
        name="iago",
        description="honest, honest Iago",
        fingerprint=tiny.fingerprint,
        init="text",
        base_model="tiny-llama",
        system="Speak as Iago.",
        kind="deep",
        layout=KVLayout.of_config(tiny.model.config),
        extra={"note": "kept"},
    )


def fresh_model(tiny_model_dir):
    """PeftModel wraps the base model in place: never hand it the shared session fixture."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def assert_runs_as_peft(loaded, peft_model, prompt: SoftPrompt) -> None:
    """persona's engine with `prompt` gives the PEFT model's logits at every position of TEXTS."""
    backend = ChatEngine(loaded).backend
    for text in TEXTS:
        ids = loaded.tokenizer.encode(text)
        with torch.no_grad():
            theirs = peft_model(input_ids=torch.tensor([ids])).logits[0]  # (T, V)
        for length in range(1, len(ids) + 1):
            ours = backend.prefill(
                backend.new_cache(), ids[:length], prompt.embeddings, kind="deep"
            )
            torch.testing.assert_close(ours, theirs[length - 1], atol=1e-5, rtol=0)  # (V,)


def assert_same_persona(got: SoftPrompt, want: SoftPrompt) -> None:
    assert torch.equal(got.embeddings, want.embeddings)
    fields = (
        "name",
        "description",
        "fingerprint",
        "init",
        "base_model",
        "system",
        "kind",
        "layout",
    )
    assert {f: getattr(got, f) for f in fields} == {f: getattr(want, f) for f in fields}
    assert got.extra == want.extra


def one_line(caught: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(caught.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


# ---- export: a PREFIX_TUNING adapter PEFT runs as persona does ---------------------------------


def test_the_tiny_models_layout_is_the_one_peft_builds_for_it(deep_prompt):
    assert deep_prompt.layout == TINY_LAYOUT
    assert deep_prompt.width == TINY_LAYOUT.width == 64


def test_a_deep_persona_exports_as_a_prefix_adapter_peft_runs_as_persona_does(
    each_tiny, tiny_model_dir, deep_prompt, tmp_path
):
    path = write_prompt(deep_prompt, tmp_path / "iago-adapter", "peft")
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["peft_type"] == "PREFIX_TUNING" and config["task_type"] == "CAUSAL_LM"
    assert (config["num_virtual_tokens"], config["num_layers"]) == (5, 2)
    assert (config["num_attention_heads"], config["token_dim"], config["encoder_hidden_size"]) == (
        2,
        16,
        16,
    )
    assert config["prefix_projection"] is False

    model = peft.PeftModel.from_pretrained(fresh_model(tiny_model_dir), path).eval()
    assert model.peft_config["default"].peft_type == "PREFIX_TUNING"
    assert torch.equal(model.prompt_encoder["default"].embedding.weight, deep_prompt.embeddings)
    assert_runs_as_peft(each_tiny, model, deep_prompt)


@pytest.mark.parametrize("fmt", ["peft", "persona"])
def test_a_deep_persona_round_trips_exactly(deep_prompt, tmp_path, fmt):
    path = write_prompt(deep_prompt, tmp_path / "iago", fmt)
    assert_same_persona(read_prompt(path), deep_prompt)


def test_a_soft_persona_still_exports_as_prompt_tuning(tiny_prompt, tmp_path):
    path = write_prompt(tiny_prompt, tmp_path / "soft", "peft")
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["token_dim"] == 32
    assert "prefix_projection" not in config
    assert read_prompt(path).kind == "soft"


# ---- import: adapters PEFT itself saved --------------------------------------------------------


@pytest.mark.parametrize("projection", [False, True], ids=["plain", "prefix-projection"])
def test_a_prefix_adapter_saved_by_peft_imports_and_gives_peft_logits(
    tiny, tiny_model_dir, tmp_path, projection
):
    """With prefix_projection PEFT trains an MLP but saves its output, the keys and values, and
    runs them as they are when it loads the adapter: so the import is the same."""
    torch.manual_seed(5)
    config = peft.PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=4, prefix_projection=projection
    )
    trained = peft.get_peft_model(fresh_model(tiny_model_dir), config).eval()
    trained.save_pretrained(tmp_path / "roderigo")

    prompt = read_prompt(tmp_path / "roderigo")
    assert (prompt.kind, prompt.layout, prompt.num_virtual_tokens) == ("deep", TINY_LAYOUT, 4)
    assert (prompt.name, prompt.init, prompt.fingerprint) == ("roderigo", "imported", None)
    assert_runs_as_peft(tiny, trained, prompt)
    loaded = peft.PeftModel.from_pretrained(fresh_model(tiny_model_dir), tmp_path / "roderigo")
    assert_runs_as_peft(tiny, loaded.eval(), prompt)


def test_import_checks_a_deep_persona_against_the_models_layout(
    capsys, tiny_model_dir, deep_prompt, tmp_path
):
    path = write_prompt(deep_prompt, tmp_path / "iago-adapter", "peft")
    library = str(tmp_path / "library.db")
    argv = ["import", str(path), "--library", library, "--model"]
    assert main([*argv, str(tiny_model_dir)]) == 0
    assert "imported 'iago'" in capsys.readouterr().out
    stored = open_library(library)
    try:
        assert_same_persona(stored.get_prompt("iago"), deep_prompt)
    finally:
        stored.close()

    wider = edited_copy(
        tiny_model_dir, tmp_path / "wider", "config.json", {"num_key_value_heads": 4}
    )
    assert main([*argv, str(wider), "--name", "iago2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("persona: error: ") and err.count("\n") == 1, err
    assert "holds keys and values for 2x2x8" in err and "has 2x4x8" in err


def test_the_fit_check_reads_every_part_of_the_layout(tiny_model_dir, deep_prompt, tmp_path):
    check_width(deep_prompt, tiny_model_dir)
    changes = {
        "deeper": ({"num_hidden_layers": 3}, "3x2x8"),
        "wider-heads": ({"head_dim": 16}, "2x2x16"),
        "no-gqa": ({"num_key_value_heads": None}, "2x4x8"),
    }
    for name, (change, layout) in changes.items():
        model_dir = edited_copy(tiny_model_dir, tmp_path / name, "config.json", change)
        with pytest.raises(PromptMismatchError) as caught:
            check_width(deep_prompt, model_dir)
        one_line(caught, "'iago'", "for 2x2x8", f"has {layout}", "tiny-llama")


def test_a_deep_persona_of_no_known_model_fits_by_its_layout_alone(
    tiny_model_dir, deep_prompt, tmp_path
):
    foreign = SoftPrompt(
        deep_prompt.embeddings, name="foreign", kind="deep", layout=deep_prompt.layout
    )
    check_width(foreign, tiny_model_dir)
    # a hand-edited config.json: a string where a number belongs is skipped (head_dim comes from
    # hidden_size / num_attention_heads then), never a crash
    edited = edited_copy(tiny_model_dir, tmp_path / "edited", "config.json", {"head_dim": "8"})
    check_width(foreign, edited)
    no_layers = edited_copy(
        tiny_model_dir, tmp_path / "no-layers", "config.json", {"num_hidden_layers": "two"}
    )
    with pytest.raises(PromptMismatchError) as caught:
        check_width(foreign, no_layers)
    one_line(caught, "for 2x2x8", "no plain KV cache layout")


# ---- refusals ------------------------------------------------------------------------------------


def edit_config(path, **change) -> None:
    file = path / "adapter_config.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), **change}))


@pytest.mark.parametrize(
    "change, fragments",
    [
        pytest.param(
            {"num_layers": 3},
            ("shape (5, 64)", "num_virtual_tokens=5 and 3x2x8", "96 columns", "inconsistent"),
            id="more-layers",
        ),
        pytest.param(
            {"num_virtual_tokens": 6},
            ("shape (5, 64)", "num_virtual_tokens=6", "inconsistent"),
            id="more-tokens",
        ),
        pytest.param(
            {"num_layers": 1, "num_attention_heads": 4, "token_dim": 32},
            ("record the layout 2x2x8", "says 1x4x8", "re-export"),
            id="same-width-other-layout",
        ),
        pytest.param(
            {"token_dim": 15},
            ("token_dim=15, not a multiple of num_attention_heads=2",),
            id="split-heads",
        ),
        pytest.param(
            {"num_layers": None},
            ("needs positive num_layers, num_attention_heads and token_dim", "None, 2, 16"),
            id="no-layers",
        ),
        pytest.param(
            {"peft_type": "PROMPT_TUNING"},
            ("says PROMPT_TUNING but the weights hold a deep prompt (2x2x8)",),
            id="soft-config-deep-weights",
        ),
        pytest.param(
            {"peft_type": "LORA"},
            ("'LORA' PEFT adapter, not PROMPT_TUNING or PREFIX_TUNING",),
            id="lora",
        ),
    ],
)
def test_an_inconsistent_prefix_adapter_is_refused_in_one_line(
    deep_prompt, tmp_path, change, fragments
):
    path = write_prompt(deep_prompt, tmp_path / "iago-adapter", "peft")
    edit_config(path, **change)
    with pytest.raises(PromptFormatError) as caught:
        read_prompt(path)
    one_line(caught, *fragments)


def test_a_deep_persona_has_no_kobold_form(deep_prompt, tmp_path):
    with pytest.raises(PromptFormatError) as caught:
        write_prompt(deep_prompt, tmp_path / "iago.zip", "kobold")
    one_line(caught, "'iago' is a deep persona", "input-layer embeddings only", "--format peft")
    assert not (tmp_path / "iago.zip").exists()


def test_exporting_a_deep_persona_to_kobold_is_one_line_at_the_command(
    capsys, deep_prompt, tmp_path
):
    library = open_library()
    try:
        library.add_version("iago", deep_prompt)
    finally:
        library.close()
    assert main(["export", "iago", str(tmp_path / "iago.zip"), "--format", "kobold"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("persona: error: ") and err.count("\n") == 1, err
    assert "--format peft" in err and not (tmp_path / "iago.zip").exists()
