"""Can a reader tell the personas apart? Each persona's replies, attributed among all of them.

The style share asks whether a persona's replies read like its speaker rather than like the bare
model; it does not ask whether Falstaff reads like Falstaff rather than like Lear. Here one
classifier learns the real lines of every speaker being compared (the same features as the style
classifier, a multinomial logistic regression with balanced class weights), and each persona's
replies are attributed to one of the k speakers. A persona's *self share* is the share given to its
own speaker: chance is 1/k, and its written prompt's self share is the bar to clear.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from persona.errors import DialogueError
from persona.style.classifier import normalised, style_features
from persona.style.stats import wilson_interval

MIN_LINES = 2  # real lines a speaker needs to be learned at all


class SpeakerClassifier:
    """Which of several speakers wrote a text, learned from each speaker's real lines."""

    def __init__(self, lines: Mapping[str, Sequence[str]], *, c: float = 4.0) -> None:
        kept = {
            speaker: [normalised(text) for text in texts if text.strip()]
            for speaker, texts in lines.items()
        }
        short = [speaker for speaker, texts in kept.items() if len(texts) < MIN_LINES]
        if len(kept) < 2 or short:
            raise DialogueError(
                "telling personas apart needs at least 2 speakers with at least "
                f"{MIN_LINES} non-empty lines each; "
                + (f"too few lines for {', '.join(short)}" if short else f"got {len(kept)}")
            )
        self.speakers = sorted(kept)
        self.pipeline = Pipeline(
            [
                ("features", style_features()),
                ("model", LogisticRegression(C=c, class_weight="balanced", max_iter=2000)),
            ]
        )
        texts = [text for speaker in self.speakers for text in kept[speaker]]
        labels = [speaker for speaker in self.speakers for _ in kept[speaker]]
        self.pipeline.fit(texts, labels)

    def attribute(self, texts: Sequence[str]) -> list[str | None]:
        """The speaker each text is given to; None for a blank text (nobody's)."""
        kept = [i for i, text in enumerate(texts) if text.strip()]
        given: list[str | None] = [None] * len(texts)
        if kept:
            predicted = self.pipeline.predict([normalised(texts[i]) for i in kept])
            for i, speaker in zip(kept, predicted, strict=True):
                given[i] = str(speaker)
        return given


@dataclass
class SelfShare:
    """The share of one persona's texts given to its own speaker, with its 95% interval."""

    share: float
    low: float
    high: float
    texts: int

    def as_tuple(self) -> tuple[float, float, float]:
        return self.share, self.low, self.high


def self_shares(
    classifier: SpeakerClassifier, texts: Mapping[str, Sequence[str]]
) -> dict[str, SelfShare]:
    """For each speaker, the share of `texts[speaker]` the classifier gives back to it."""
    shares: dict[str, SelfShare] = {}
    for speaker, written in texts.items():
        if speaker not in classifier.speakers:
            raise DialogueError(
                f"no real lines of {speaker!r} were learned; compare it with lines of its own"
            )
        if not written:
            raise DialogueError(f"no texts of {speaker!r} to attribute")
        given = classifier.attribute(written)
        hits = sum(found == speaker for found in given)
        low, high = wilson_interval(hits, len(written))
        shares[speaker] = SelfShare(hits / len(written), low, high, len(written))
    return shares
