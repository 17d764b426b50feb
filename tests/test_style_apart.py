"""Telling personas apart: one classifier over every speaker's real lines, each persona's replies
given to one speaker, the share given back to its own with an interval."""

from __future__ import annotations

import pytest

from persona.errors import DialogueError
from persona.style.apart import SpeakerClassifier, self_shares

SAILOR = [
    "Hoist the mainsail, ye scurvy dogs, the tide waits for no man!",
    "Arr, the sea be cruel and the rum be sweet.",
    "Batten down the hatches, a storm be coming off the starboard bow.",
    "Ye'll walk the plank before sundown, matey.",
    "The ship be sound and the wind be fair, so haul away!",
    "Splice the mainbrace and ready the cannons, lads.",
]
COOK = [
    "Whisk the eggs until they are light, then fold in the flour gently.",
    "A pinch of salt lifts every sauce; taste as you go.",
    "Let the dough rest for an hour before you roll it thin.",
    "Sear the meat on a hot pan, then lower the heat and baste it.",
    "Butter, garlic and a splash of wine: the start of every good dish.",
    "Simmer the stock slowly and skim it often.",
]


def test_each_speakers_own_style_is_given_back_to_it():
    classifier = SpeakerClassifier({"sailor": SAILOR, "cook": COOK})
    shares = self_shares(
        classifier,
        {
            "sailor": ["Arr, haul the anchor, the wind be fair, matey!", "Ye scurvy dogs, to sea!"],
            "cook": [
                "Fold the butter into the dough and let it rest.",
                "Taste the sauce, add salt.",
            ],
        },
    )
    assert shares["sailor"].share == 1.0 and shares["cook"].share == 1.0
    assert 0 < shares["sailor"].low < 1.0 == shares["sailor"].high  # two texts: a wide interval


def test_a_persona_that_reads_like_another_scores_low_on_itself():
    classifier = SpeakerClassifier({"sailor": SAILOR, "cook": COOK})
    shares = self_shares(classifier, {"sailor": ["Whisk the eggs and simmer the stock slowly."]})
    assert shares["sailor"].share == 0.0


def test_blank_texts_count_as_nobodys():
    classifier = SpeakerClassifier({"sailor": SAILOR, "cook": COOK})
    assert classifier.attribute(["  ", "Arr, matey!"]) == [None, "sailor"]
    assert self_shares(classifier, {"sailor": ["", "Arr, to sea!"]})["sailor"].share == 0.5


def test_too_few_speakers_or_lines_are_refused_in_one_line():
    with pytest.raises(DialogueError, match="at least 2 speakers"):
        SpeakerClassifier({"sailor": SAILOR})
    with pytest.raises(DialogueError, match="too few lines for cook"):
        SpeakerClassifier({"sailor": SAILOR, "cook": ["Salt."]})
    classifier = SpeakerClassifier({"sailor": SAILOR, "cook": COOK})
    with pytest.raises(DialogueError, match="no real lines of 'lear'"):
        self_shares(classifier, {"lear": ["Blow, winds!"]})
