"""A classifier of one speaker's style: their real lines against the bare model's replies.

Word 1-2 grams and character 2-4 grams (within words) weighted by TF-IDF, into a logistic
regression with balanced class weights (a speaker usually has many more lines than we can afford
to generate bare replies). `score` gives P(speaker) per text. Whitespace is collapsed first, so a
verse line break is not a cue the generated replies could never show.
"""

from __future__ import annotations

from collections.abc import Sequence

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline, make_union

from persona.errors import DialogueError

SPEAKER_THRESHOLD = 0.5  # a text is attributed to the speaker when P(speaker) is above this


def normalised(text: str) -> str:
    return " ".join(text.split())


def style_features() -> FeatureUnion:
    """Word 1-2 grams and character 2-4 grams within words, each weighted by TF-IDF."""
    return make_union(
        TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True),
    )


class StyleClassifier:
    """P(speaker) of a text, learned from `positives` (the speaker's) and `negatives` (not)."""

    def __init__(self, positives: Sequence[str], negatives: Sequence[str], *, c: float = 4.0):
        positives = [normalised(text) for text in positives if text.strip()]
        negatives = [normalised(text) for text in negatives if text.strip()]
        if len(positives) < 2 or len(negatives) < 2:
            raise DialogueError(
                f"the style classifier needs at least 2 non-empty lines of each kind; got "
                f"{len(positives)} by the speaker and {len(negatives)} others"
            )
        self.positives = len(positives)
        self.negatives = len(negatives)
        self.pipeline = Pipeline(
            [
                ("features", style_features()),
                (
                    "model",
                    LogisticRegression(C=c, class_weight="balanced", max_iter=2000),
                ),
            ]
        )
        labels = [1] * len(positives) + [0] * len(negatives)
        self.pipeline.fit([*positives, *negatives], labels)

    def score(self, texts: Sequence[str]) -> list[float]:
        """P(speaker) for each text; an empty or blank text is nobody's style (0.0)."""
        kept = [i for i, text in enumerate(texts) if text.strip()]
        scores = [0.0] * len(texts)
        if kept:
            column = list(self.pipeline.classes_).index(1)
            probabilities = self.pipeline.predict_proba([normalised(texts[i]) for i in kept])
            for i, row in zip(kept, probabilities, strict=True):
                scores[i] = float(row[column])
        return scores

    def attributed(self, texts: Sequence[str]) -> list[bool]:
        """Whether each text is attributed to the speaker (P above SPEAKER_THRESHOLD)."""
        return [p > SPEAKER_THRESHOLD for p in self.score(texts)]
