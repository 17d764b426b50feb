"""Mixed-persona batches: each row's greedy output equals running it alone."""

from __future__ import annotations

import pytest
import torch

from persona.engine.batch import BatchRequest, generate_batch
from persona.engine.chat import ChatEngine
from persona.engine.config import GenerationConfig
from persona.errors import ConfigError
from persona.prompt.softprompt import SoftPrompt

GREEDY = GenerationConfig(temperature=0, repetition_penalty=1.0, max_new_tokens=10)


def prompt(each_tiny, seed: int, length: int) -> SoftPrompt:
    generator = torch.Generator().manual_seed(seed)
    return SoftPrompt(
        torch.randn(length, each_tiny.fingerprint.hidden_size, generator=generator),
        name=f"p{seed}",
        fingerprint=each_tiny.fingerprint,
    )


def solo_token_ids(engine: ChatEngine, requests, config: GenerationConfig) -> list[list[int]]:
    """Each batch request's reply token ids, answered alone by `engine`."""
    alone = []
    for request in requests:
        engine.reply(request.messages, request.persona, config)
        alone.append(engine.last.token_ids)
    return alone


def test_each_row_equals_running_it_alone(each_tiny):
    engine = ChatEngine(each_tiny)
    requests = [
        BatchRequest([{"role": "user", "content": "Hello there!"}], prompt(each_tiny, 1, 5)),
        BatchRequest(
            [{"role": "user", "content": "What is the capital of France? Tell me now."}],
            prompt(each_tiny, 2, 9),
        ),
        BatchRequest([{"role": "user", "content": "To be?"}], None),
        BatchRequest([{"role": "user", "content": "Hello there!"}], prompt(each_tiny, 3, 5)),
    ]
    results, _ = generate_batch(engine, requests, GREEDY)
    alone = solo_token_ids(engine, requests, GREEDY)
    assert [r.token_ids for r in results] == alone
    assert len({tuple(ids) for ids in alone}) == len(alone)  # different personas, different replies


def test_prompt_for_another_model_in_a_batch_is_refused(each_tiny):
    wide = SoftPrompt(torch.zeros(2, each_tiny.fingerprint.hidden_size + 4), name="wide")
    with pytest.raises(Exception, match="width"):
        generate_batch(
            ChatEngine(each_tiny), [BatchRequest([{"role": "user", "content": "hi"}], wide)], GREEDY
        )


def test_empty_batch_is_refused(each_tiny):
    with pytest.raises(ConfigError):
        generate_batch(ChatEngine(each_tiny), [], GREEDY)
