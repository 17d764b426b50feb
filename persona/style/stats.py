"""Small statistics for the style report: a share's confidence interval and distinct-n."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

WORD_RE = re.compile(r"\w+|[^\w\s]")  # words and single punctuation marks
Z_95 = 1.959963984540054  # the standard normal quantile of 0.975


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """(low, high) of the Wilson score interval for successes / trials (95% by default).

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0 or n successes,
    which small samples of replies often give."""
    if trials <= 0:
        raise ValueError(f"trials must be at least 1, got {trials}")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be in [0, {trials}], got {successes}")
    share = successes / trials
    denominator = 1 + z * z / trials
    centre = (share + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks, the units distinct-n counts."""
    return WORD_RE.findall(text.lower())


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct n-grams / n-grams over all `texts` (n-grams never cross two texts); 0.0 for none.

    A reply that repeats itself, or replies that all say the same, score low."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    grams: list[tuple[str, ...]] = []
    for text in texts:
        units = words(text)
        grams.extend(tuple(units[i : i + n]) for i in range(len(units) - n + 1))
    return len(set(grams)) / len(grams) if grams else 0.0
