"""The training loop on the tiny model: it learns, it is deterministic, Ctrl-C + --resume loses nothing."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from persona.dialogue import Conversation, Dialogue, Turn
from persona.errors import ConfigError, DialogueError
from persona.train import TrainConfig
from persona.train.checkpoint import checkpoint_path, load_checkpoint
from persona.train.config import CPU_PART_TOKENS
from persona.train.loop import TrainingInterrupted, micro_batches
from persona.train.run import MIN_EXAMPLES, train_persona
from tests.helpers import REPLIES, bard_dialogue


def quick(**overrides) -> TrainConfig:
    settings = {
        "num_virtual_tokens": 4,
        "steps": 12,
        "lr": 0.05,
        "batch_size": 4,
        "seed": 7,
        "validation_fraction": 0.2,
    }
    return TrainConfig(**{**settings, **overrides})


def bob(tiny, name: str, config: TrainConfig, **options):
    """`train_persona` of BOB on the bard dialogue, stored as `name`, without a progress bar."""
    return train_persona(
        tiny, bard_dialogue(), speaker="BOB", name=name, config=config, progress=False, **options
    )


def test_training_lowers_held_out_nll_below_no_prompt(tiny) -> None:
    trained = train_persona(
        tiny, bard_dialogue(), speaker="bob", name="bob", config=quick(steps=30), progress=False
    )
    nll = trained.metrics["nll"]
    assert nll["persona"] < nll["no_prompt"] - 0.1
    assert nll["written_prompt"] is None  # no description, no written baseline
    assert (
        trained.metrics["examples"] > 0 and trained.metrics["tokens"] > trained.metrics["examples"]
    )
    assert trained.prompt.fingerprint == tiny.fingerprint and trained.prompt.num_virtual_tokens == 4
    assert trained.prompt.init == "vocab"
    assert trained.training["speaker"] == "BOB" and trained.training["steps"] == 30


def test_description_starts_from_its_text_and_adds_the_written_baseline(tiny) -> None:
    trained = train_persona(
        tiny,
        bard_dialogue(),
        speaker="BOB",
        name="bob",
        description="a test voice",
        config=quick(steps=2),
        progress=False,
    )
    assert trained.prompt.init == "text" and trained.prompt.description == "a test voice"
    assert isinstance(trained.metrics["nll"]["written_prompt"], float)


def test_same_seed_gives_the_identical_prompt_and_another_seed_does_not(tiny) -> None:
    first = bob(tiny, "a", quick())
    second = bob(tiny, "b", quick())
    other = bob(tiny, "c", quick(seed=8))
    assert torch.equal(first.prompt.embeddings, second.prompt.embeddings)
    assert not torch.equal(first.prompt.embeddings, other.prompt.embeddings)


def test_ctrl_c_saves_a_checkpoint_that_resume_continues_exactly(tiny) -> None:
    uninterrupted = bob(tiny, "whole", quick())

    def press_ctrl_c(step: int, loss: float) -> None:
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as caught:
        bob(tiny, "split", quick(), on_step=press_ctrl_c)
    assert caught.value.step == 5 and caught.value.checkpoint == checkpoint_path("split")
    assert load_checkpoint(caught.value.checkpoint).step == 5

    resumed = bob(tiny, "split", quick(), resume=True)
    assert resumed.training["steps"] == 12
    torch.testing.assert_close(
        resumed.prompt.embeddings, uninterrupted.prompt.embeddings, atol=1e-6, rtol=1e-5
    )


@pytest.mark.parametrize("kind", ["deep", "soft"])
def test_micro_batches_train_the_prompt_the_whole_batch_trains(tiny, kind) -> None:
    whole = bob(tiny, "whole", quick(kind=kind, micro_batch_size=0))
    parts = bob(tiny, "parts", quick(kind=kind, micro_batch_size=1))
    # the same gradient summed in another order: equal up to float rounding, step after step
    torch.testing.assert_close(
        parts.prompt.embeddings, whole.prompt.embeddings, atol=1e-5, rtol=1e-4
    )
    assert parts.training["final_loss"] == pytest.approx(whole.training["final_loss"], rel=1e-4)
    assert parts.training["config"]["micro_batch_size"] == 1
    assert TrainConfig().parts("cpu") == (0, CPU_PART_TOKENS) and TrainConfig().parts("cuda") == (
        0,
        0,
    )
    assert TrainConfig(micro_batch_size=2).parts("cpu") == (2, 0)


def test_micro_batches_put_the_longest_rows_together() -> None:
    from persona.dialogue.encode import EncodedExample

    examples = [EncodedExample([0] * n, [0] * n) for n in (3, 9, 5, 7, 1)]

    def lengths(parts):
        return [[len(e.input_ids) for e in part] for part in parts]

    assert lengths(micro_batches(examples, 2)) == [[9, 7], [5, 3], [1]]
    assert micro_batches(examples, 0) == [examples] and micro_batches(examples, 8) == [examples]
    # by tokens: rows x the part's longest within 14; a row longer than that goes alone
    assert lengths(micro_batches(examples, 0, 14)) == [[9], [7, 5], [3, 1]]
    assert lengths(micro_batches(examples, 0, 8)) == [[9], [7], [5], [3, 1]]
    assert lengths(micro_batches(examples, 1, 100)) == [[9], [7], [5], [3], [1]]


def test_a_run_resumes_under_another_micro_batch(tiny) -> None:
    def stop(step: int, loss: float) -> None:
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        bob(tiny, "smaller", quick(micro_batch_size=0), on_step=stop)
    # out of memory at the whole batch: go on two rows at a time
    resumed = bob(tiny, "smaller", quick(micro_batch_size=2), resume=True)
    assert resumed.training["steps"] == 12


def test_checkpoint_is_safetensors_with_json_state_not_pickle(tiny) -> None:
    def stop(step: int, loss: float) -> None:
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as caught:
        bob(tiny, "ck", quick(), on_step=stop)
    data = caught.value.checkpoint.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    assert set(header) == {"__metadata__", "prompt", "exp_avg", "exp_avg_sq"}
    assert json.loads(header["__metadata__"]["state"])["step"] == 2


def test_resume_refuses_a_checkpoint_made_with_other_settings(tiny) -> None:
    def stop(step: int, loss: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        bob(tiny, "mixed", quick(), on_step=stop)
    with pytest.raises(ConfigError, match=r"trained with lr=0.05, this run asks for 0.01"):
        bob(tiny, "mixed", quick(lr=0.01), resume=True)


def test_resume_without_a_checkpoint_says_so(tiny) -> None:
    with pytest.raises(ConfigError, match="there is no checkpoint to resume"):
        bob(tiny, "never", quick(), resume=True)


def test_too_few_examples_says_how_many_there_are_and_are_needed(tiny) -> None:
    with pytest.raises(
        DialogueError,
        match=rf"only 4 lines by 'BOB' in bard\.txt; training needs at least {MIN_EXAMPLES}",
    ):
        train_persona(
            tiny, bard_dialogue(2), speaker="BOB", name="few", config=quick(), progress=False
        )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"num_virtual_tokens": 0},
            r"--virtual-tokens \(num_virtual_tokens\) must be an integer between 1 and 512, got 0",
        ),
        ({"steps": 0}, r"--steps \(steps\) must be an integer at least 1, got 0"),
        ({"steps": 5, "epochs": 1.0}, r"give --steps or --epochs, not both"),
        ({"lr": -1.0}, r"--lr must be a positive learning rate such as 0.01, got -1.0"),
        ({"lr": float("nan")}, r"--lr must be a positive learning rate such as 0.01, got nan"),
        (
            {"batch_size": 0},
            r"--batch-size \(batch_size\) must be an integer between 1 and 4096, got 0",
        ),
        ({"init": "zeros"}, r"--init must be one of auto, text, vocab, random, got 'zeros'"),
        ({"validation_fraction": 1.0}, r"--validation-fraction must be in \[0, 1\), got 1.0"),
    ],
)
def test_config_refuses_bad_values_naming_the_field_and_quoting_the_value(
    overrides, message
) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**overrides)


def test_epochs_turn_into_steps_over_the_training_examples() -> None:
    assert TrainConfig(epochs=2, batch_size=8).total_steps(20) == 6
    assert TrainConfig().total_steps(20) == 60


def test_lines_that_open_a_conversation_train_but_only_replies_are_scored(tiny) -> None:
    opening = Dialogue(
        [
            Conversation(
                [
                    Turn("BOB", REPLIES[i % 2]),
                    Turn("ALICE", "Hello there!"),
                    Turn("BOB", REPLIES[(i + 1) % 2]),
                ]
            )
            for i in range(12)
        ],
        source="opening.txt",
        sha256="cd" * 32,
    )
    trained = train_persona(
        tiny,
        opening,
        speaker="BOB",
        name="opener",
        description="a bard",
        config=quick(steps=2),
        progress=False,
    )
    assert trained.training["train_examples"] + trained.training["validation_examples"] == 24
    assert (
        trained.metrics["examples"] * 2 == trained.training["validation_examples"]
    )  # the openers are not scored
    assert all(isinstance(v, float) for v in trained.metrics["nll"].values())
