"""Does a persona *read* like its speaker? A style measure beside the held-out NLL.

Held-out NLL says how likely the speaker's real lines are; it does not say whether what the
persona writes sounds like the speaker. This package answers that second question:

- `stats`: Wilson intervals for a share, distinct-n for degenerate text.
- `classifier`: TF-IDF + logistic regression, the speaker's real lines against the bare model's.
- `identity`: does an answer to "Who are you?" name the character?
- `generate`: replies under each condition (no prompt, written prompt, soft prompt), with progress.
- `data`: the speaker's training and held-out examples, split as training splits them.
- `report`: `measure_style` ties them together into a JSON-able `StyleReport`.
"""
