"""The style measure end to end on the tiny random model: every field there, JSON round trip."""

from __future__ import annotations

import json
import random

import pytest

from persona.dialogue.split import seeded_sample as sample
from persona.dialogue.split import split_speaker
from persona.dialogue.types import Conversation, Dialogue, Turn
from persona.engine.chat import ChatEngine
from persona.engine.config import GenerationConfig
from persona.style.data import split_in_halves
from persona.style.generate import (
    CONDITIONS,
    NO_PROMPT,
    PERSONA,
    WRITTEN_PROMPT,
    Condition,
    conditions_for,
    generate_replies,
)
from persona.style.identity import IDENTITY_QUESTIONS
from persona.style.report import StyleConfig, StyleReport, measure_style, share_text

OLD = "thee thou prithee art hath marry sirrah anon wherefore methinks".split()
PLAIN = "hello how are you today what is the news".split()


def play(scenes: int = 12, seed: int = 0) -> Dialogue:
    """Scenes where TOBY answers someone in old words; each scene is one conversation."""
    rng = random.Random(seed)
    conversations = []
    for _ in range(scenes):
        turns = []
        for _ in range(3):
            turns.append(Turn("MARIA", " ".join(rng.choices(PLAIN, k=5))))
            turns.append(Turn("SIR TOBY", " ".join(rng.choices(OLD, k=6))))
        conversations.append(Conversation(turns))
    return Dialogue(conversations=conversations, source="test play", sha256="0" * 64)


@pytest.fixture
def small_config() -> StyleConfig:
    return StyleConfig(sample=4, negatives=4, max_new_tokens=6, identity_tokens=5, batch_size=3)


def test_the_report_has_every_field_and_survives_json(
    tiny_native, tiny_prompt, small_config, capsys
):
    split = split_speaker(play(), "sir toby", context_turns=2, validation_fraction=0.3, seed=0)
    train, heldout = split.train, split.heldout
    report = measure_style(
        ChatEngine(tiny_native),
        tiny_prompt,
        speaker="SIR TOBY",
        train=train,
        heldout=heldout,
        description="You are Sir Toby Belch.",
        config=small_config,
    )
    assert report.character == "Toby"
    assert report.conditions == list(CONDITIONS)
    assert report.sample_size == 4 and report.negatives <= 4
    for condition in CONDITIONS:
        share, low, high = report.share[condition]
        assert 0.0 <= low <= share <= high <= 1.0
        assert 0 < report.mean_tokens[condition] <= small_config.max_new_tokens
        assert 0.0 <= report.distinct2[condition] <= 1.0
        answers = report.identity[condition]
        assert [a.question for a in answers] == list(IDENTITY_QUESTIONS)
        assert all(isinstance(a.named, bool) for a in answers)
        assert len(report.samples[condition]) <= 3
    # the measure's own check: the real lines were written in the style it learned
    assert report.real_lines_share[0] == 1.0
    assert report.real_lines_tokens > 0 and report.real_lines_distinct2 > 0
    again = StyleReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again == report
    assert "style" in capsys.readouterr().err  # the progress bar, on stderr


def test_a_reply_does_not_depend_on_the_batch_it_was_decoded_in(tiny_native):
    engine = ChatEngine(tiny_native)
    contexts = [[{"role": "user", "content": text}] for text in ("hello", "how are you", "news")]
    config = GenerationConfig(max_new_tokens=5, seed=7)
    together = generate_replies(engine, contexts, Condition(NO_PROMPT), config, batch_size=3)
    alone = generate_replies(engine, contexts, Condition(NO_PROMPT), config, batch_size=1)
    assert together == alone


def test_no_description_means_no_written_condition(tiny_prompt):
    with_text = conditions_for(tiny_prompt, "You are Sir Toby Belch.")
    assert [c.name for c in with_text] == [NO_PROMPT, WRITTEN_PROMPT, PERSONA]
    assert with_text[1].system == "You are Sir Toby Belch." and with_text[2].persona is tiny_prompt
    assert [c.name for c in conditions_for(tiny_prompt, "  ")] == [NO_PROMPT, PERSONA]


def test_the_heldout_log_replaces_the_validation_split():
    split = split_speaker(
        play(), "SIR TOBY", context_turns=2, validation_fraction=0.3, heldout=play(2, seed=9)
    )
    assert len(split.heldout) == 6 and len(split.train) > len(split.heldout)


def test_a_sample_is_seeded_and_bounded():
    train = split_speaker(play(), "SIR TOBY", context_turns=2, validation_fraction=0.3).train
    assert sample(train, 5, seed=1) == sample(train, 5, seed=1) != sample(train, 5, seed=2)
    assert len(sample(train, 5, seed=1)) == 5 and sample(train, None, seed=1) == train


def test_a_log_measured_on_its_own_is_split_in_halves_by_conversation():
    examples = split_speaker(play(), "SIR TOBY", context_turns=2, validation_fraction=0.0).train
    train, heldout = split_in_halves(examples)
    assert len(train) + len(heldout) == len(examples)
    assert not {e.conversation for e in train} & {e.conversation for e in heldout}


def test_a_share_reads_as_a_percentage_and_its_interval():
    assert share_text((0.375, 0.2, 0.56)) == "38% [20%, 56%]"
