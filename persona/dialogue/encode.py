"""Examples -> (input ids, labels) through the chat renderer, so training sees chat's exact token layout."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from persona.dialogue.examples import Example
from persona.prompt.inject import IGNORE_INDEX
from persona.prompt.render import Renderer

DEFAULT_MAX_LENGTH = 256  # tokens after the soft prompt; older context turns are dropped to fit
DEFAULT_MAX_REPLY_TOKENS = 160  # longer replies are cut (the same cut whatever the system text)
MIN_CONTEXT_CHARS = 40  # the last context turn is shortened no further than this


@dataclass(frozen=True)
class EncodedExample:
    input_ids: list[int]  # (T,)
    labels: list[int]  # (T,) IGNORE_INDEX except on the reply and its end-of-turn token

    @property
    def num_labels(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def encode_example(
    renderer: Renderer,
    example: Example,
    persona: object | None,
    *,
    system: str | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    max_reply_tokens: int = DEFAULT_MAX_REPLY_TOKENS,
) -> EncodedExample:
    """Render one example; drop its oldest context turns until it fits `max_length`.

    The turn just before the reply is never dropped (a reply needs something to answer, and the
    bare model cannot render an empty conversation); if it alone is too long, its beginning is cut.
    """
    context = list(example.context)
    while True:
        ids, labels = renderer.render_example(context, example.reply, persona, system=system)
        prefix = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
        ids, labels = ids[: prefix + max_reply_tokens], labels[: prefix + max_reply_tokens]
        if len(ids) <= max_length or not context:
            return EncodedExample(ids, labels)
        if len(context) > 1:
            context = context[1:]
            continue
        content = context[0]["content"]
        if len(content) <= MIN_CONTEXT_CHARS:
            return EncodedExample(ids, labels)
        context = [
            {"role": context[0]["role"], "content": "..." + content[len(content) // 2 :].lstrip()}
        ]


def encode_examples(
    renderer: Renderer,
    examples: Sequence[Example],
    persona: object | None,
    *,
    system: str | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    max_reply_tokens: int = DEFAULT_MAX_REPLY_TOKENS,
) -> list[EncodedExample]:
    return [
        encode_example(
            renderer,
            e,
            persona,
            system=system,
            max_length=max_length,
            max_reply_tokens=max_reply_tokens,
        )
        for e in examples
    ]
