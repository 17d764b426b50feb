"""A reply can end: the end-of-turn tokens that the chat template puts after every earlier turn are
not penalised as repetitions, so they stay as likely as the model makes them."""

from __future__ import annotations

import torch

from persona.engine.config import GenerationConfig
from persona.engine.rows import Row

END = 2  # the end-of-turn id
VOCAB = 16


def row(prompt: list[int], penalty: float) -> Row:
    config = GenerationConfig(temperature=0, repetition_penalty=penalty, max_new_tokens=8)
    return Row(cache=None, ids=list(prompt), prompt=prompt, config=config, stop_ids={END})


def logits(**scores: float) -> torch.Tensor:
    values = torch.zeros(VOCAB)  # (V,)
    for token, score in scores.items():
        values[int(token.removeprefix("t"))] = score
    return values


def test_the_end_of_turn_token_of_earlier_turns_does_not_keep_a_reply_from_ending():
    # the template's end-of-turn follows the system and the user turn; the model wants to end
    answering = row([5, END, 6, 7, END, 8], penalty=2.0)
    answering.logits = logits(t2=10.0, t9=6.0)  # penalised, the end would fall to 5 < 6
    assert answering.choose() is None and answering.finish_reason == "stop"


def test_the_words_of_the_conversation_are_still_penalised():
    repeating = row([5, END, 9, END], penalty=2.0)
    repeating.logits = logits(t9=10.0, t11=6.0)  # 9 was said: 10 / 2 = 5 < 6
    assert repeating.choose() == 11
    assert END not in repeating.seen.tolist()[0] and 9 in repeating.seen.tolist()[0]
