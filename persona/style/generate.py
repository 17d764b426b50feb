"""Replies to many conversations under one condition, in seeded batches, with a progress bar.

A condition is what stands in front of the conversation: nothing (the bare model, its chat
template's own system text), the written description as the system message, or the soft prompt
(with an empty system message, as the persona is trained and chats). Row i of a call samples with
`seed + i` whatever the batch size, so the same contexts get the same random draws under every
condition and a rerun gives the same replies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tqdm import tqdm

from persona.engine.batch import BatchRequest, generate_batch
from persona.engine.chat import ChatEngine
from persona.engine.config import GenerationConfig
from persona.prompt.render import Message
from persona.prompt.softprompt import SoftPrompt

NO_PROMPT = "no_prompt"
WRITTEN_PROMPT = "written_prompt"
PERSONA = "persona"
CONDITIONS = (NO_PROMPT, WRITTEN_PROMPT, PERSONA)


@dataclass(frozen=True)
class Condition:
    name: str  # one of CONDITIONS
    persona: SoftPrompt | None = None
    system: str | None = None


def conditions_for(persona: SoftPrompt, description: str | None) -> list[Condition]:
    """The conditions to compare; the written one only where there is a description."""
    chosen = [Condition(NO_PROMPT)]
    if description and description.strip():
        chosen.append(Condition(WRITTEN_PROMPT, system=description.strip()))
    chosen.append(Condition(PERSONA, persona=persona))
    return chosen


@dataclass
class Reply:
    text: str
    tokens: int  # generated tokens, the end-of-turn token excluded


def generate_replies(
    engine: ChatEngine,
    contexts: Sequence[Sequence[Message]],
    condition: Condition,
    config: GenerationConfig,
    *,
    batch_size: int = 8,
    bar: tqdm | None = None,
) -> list[Reply]:
    """One reply per context, `batch_size` conversations decoded together; `bar` advances per reply."""
    replies: list[Reply] = []
    for start in range(0, len(contexts), batch_size):
        chunk = contexts[start : start + batch_size]
        requests = [
            BatchRequest(list(messages), condition.persona, condition.system) for messages in chunk
        ]
        seed = None if config.seed is None else config.seed + start
        results, _ = generate_batch(
            engine, requests, GenerationConfig(**{**vars(config), "seed": seed})
        )
        replies.extend(Reply(result.text.strip(), len(result.token_ids)) for result in results)
        if bar is not None:
            bar.update(len(chunk))
    return replies
