"""The pieces of the style measure: the classifier, the statistics, the identity check."""

from __future__ import annotations

import random

import pytest

from persona.errors import ConfigError, DialogueError
from persona.style.classifier import StyleClassifier
from persona.style.identity import character_name, names_character
from persona.style.report import StyleConfig
from persona.style.stats import distinct_n, wilson_interval

OLD = (
    "thee thou thy prithee art hath doth marry sirrah forsooth anon wherefore ere methinks".split()
)
NEW = (
    "you your okay really basically actually sure great thanks maybe gonna stuff literally".split()
)
SHARED = "the a of and to in is it that was for on with as".split()


def lines(style: list[str], count: int, seed: int) -> list[str]:
    """`count` lines mixing a style's words with words both styles use."""
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(style if rng.random() < 0.4 else SHARED) for _ in range(12))
        for _ in range(count)
    ]


def test_the_classifier_tells_two_styles_apart_on_lines_it_never_saw():
    classifier = StyleClassifier(lines(OLD, 60, seed=1), lines(NEW, 30, seed=2))
    old, new = lines(OLD, 40, seed=3), lines(NEW, 40, seed=4)
    assert sum(classifier.attributed(old)) >= 38
    assert sum(classifier.attributed(new)) <= 2
    assert all(0.0 <= p <= 1.0 for p in classifier.score(old + new))


def test_the_classifier_scores_a_plain_example_of_each_style_correctly():
    classifier = StyleClassifier(lines(OLD, 60, seed=1), lines(NEW, 30, seed=2))
    speaker, plain = classifier.score(
        ["Prithee, sirrah, wherefore art thou so merry? Marry, thou hath it.", "Okay sure, thanks!"]
    )
    assert speaker > 0.5 > plain


def test_an_empty_reply_is_nobodys_style():
    classifier = StyleClassifier(lines(OLD, 20, seed=1), lines(NEW, 20, seed=2))
    assert classifier.score(["", "   \n"]) == [0.0, 0.0]


def test_the_classifier_needs_lines_of_both_kinds():
    with pytest.raises(DialogueError, match="at least 2"):
        StyleClassifier(["thou art"] * 5, ["", "  ", "okay"])


def test_distinct2_on_known_inputs():
    assert distinct_n(["a b c d"]) == 1.0  # 3 bigrams, all different
    assert distinct_n(["a b a b a b"]) == pytest.approx(2 / 5)  # (a b), (b a) over 5
    assert distinct_n(["a b", "a b"]) == pytest.approx(1 / 2)  # the same reply twice
    assert distinct_n(["a", ""]) == 0.0  # no bigrams at all
    assert distinct_n(["Yes, sir."]) == pytest.approx(1.0)  # yes , / , sir / sir .


def test_wilson_interval_on_known_inputs():
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(10, 10)
    assert high == pytest.approx(1.0) and low == pytest.approx(0.7225, abs=1e-4)
    low, high = wilson_interval(50, 100)
    assert (round(low, 4), round(high, 4)) == (0.4038, 0.5962)
    with pytest.raises(ValueError):
        wilson_interval(1, 0)


@pytest.mark.parametrize(
    ("speaker", "name"),
    [
        ("FALSTAFF", "Falstaff"),
        ("KING LEAR", "Lear"),
        ("ROSALIND", "Rosalind"),
        ("Sir Toby", "Toby"),
    ],
)
def test_character_name_from_the_speaker_heading(speaker: str, name: str):
    assert character_name(speaker) == name


@pytest.mark.parametrize(
    ("answer", "named"),
    [
        ("I am Sir John Falstaff, a knight.", True),
        ("FALSTAFF, at your service", True),
        ("Falstaff's the name", True),
        ("I am SmolLM, an AI assistant.", False),
        ("Falstaffian manners", False),
        ("", False),
    ],
)
def test_an_answer_names_the_character_only_as_a_word(answer: str, named: bool):
    assert names_character(answer, "Falstaff") is named


def test_style_config_refuses_bad_values_and_names_them():
    with pytest.raises(ConfigError, match="sample=0"):
        StyleConfig(sample=0)
    with pytest.raises(ConfigError, match="negatives=1"):
        StyleConfig(negatives=1)
    with pytest.raises(ConfigError, match="batch_size=0"):
        StyleConfig(batch_size=0)
    assert StyleConfig(sample=None).sample is None
