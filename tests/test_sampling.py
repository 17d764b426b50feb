"""Our sampling steps compute what transformers' logits processors compute, on random logits."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from persona.engine.config import GenerationConfig
from persona.engine.sampling import Sampler


def reference(config: GenerationConfig) -> LogitsProcessorList:
    processors = LogitsProcessorList()
    if config.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
    if not config.greedy:
        processors.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k > 0:
            processors.append(TopKLogitsWarper(config.top_k))
        if config.top_p < 1.0:
            processors.append(TopPLogitsWarper(config.top_p))
    return processors


@pytest.mark.parametrize(
    "settings",
    [
        {"temperature": 0, "repetition_penalty": 1.3},
        {"temperature": 0.7, "top_p": 0.9, "top_k": 50, "repetition_penalty": 1.1},
        {"temperature": 1.5, "top_p": 0.5, "top_k": 0, "repetition_penalty": 1.0},
        {"temperature": 0.3, "top_p": 1.0, "top_k": 3, "repetition_penalty": 0.8},
        {"temperature": 1.0, "top_p": 0.01, "top_k": 0, "repetition_penalty": 1.0},
    ],
)
def test_scores_match_transformers_processors(settings):
    config = GenerationConfig(seed=0, **settings)
    generator = torch.Generator().manual_seed(3)
    for _ in range(5):
        logits = torch.randn(1, 500, generator=generator) * 4  # (1, V)
        seen = torch.randint(0, 500, (1, 40), generator=generator)  # repeats included
        ours = Sampler(config).process(logits, seen)
        theirs = reference(config)(seen, logits.clone())
        assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
        finite = ~torch.isinf(theirs)
        torch.testing.assert_close(ours[finite], theirs[finite], atol=1e-6, rtol=1e-6)
        assert finite.sum() >= 1


def test_a_tie_at_the_kth_score_keeps_every_tied_token_as_transformers_does():
    config = GenerationConfig(temperature=1.0, top_k=3, top_p=0.95, repetition_penalty=1.0, seed=0)
    logits = torch.tensor(
        [[5.0, 1.0, 4.0, 2.0, 2.0, 2.0, -1.0, 0.5]]
    )  # the 3rd highest (2.0) is tied three times
    seen = torch.zeros(1, 1, dtype=torch.long)
    ours = Sampler(config).process(logits, seen)
    theirs = reference(config)(seen, logits.clone())
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    assert (
        int((~torch.isinf(ours)).sum()) > 3
    )  # more than k survive: the tie took the whole-vocabulary path


def test_drawing_among_the_top_k_samples_what_the_processed_scores_say():
    """The draw runs on the top-k survivors only; it must follow softmax(process(...)) over the vocabulary."""
    config = GenerationConfig(temperature=0.8, top_k=6, top_p=0.9, repetition_penalty=1.2, seed=11)
    logits = torch.randn(1, 300, generator=torch.Generator().manual_seed(5)) * 2  # (1, V)
    seen = torch.tensor([[int(logits.argmax()), 7, 7]])
    sampler = Sampler(config)
    expected = torch.softmax(sampler.process(logits, seen), dim=-1)[0]  # (V,)
    draws = 4000
    counts = torch.bincount(
        torch.tensor([sampler.next_token(logits, seen) for _ in range(draws)]), minlength=300
    )
    assert set(torch.nonzero(counts).flatten().tolist()) <= set(
        torch.nonzero(expected).flatten().tolist()
    )
    assert (counts / draws - expected).abs().max() < 0.03  # about 4 standard errors at these sizes
    first, second = Sampler(config), Sampler(config)  # the same seed: the same draws
    assert [first.next_token(logits, seen) for _ in range(20)] == [
        second.next_token(logits, seen) for _ in range(20)
    ]


def test_a_vanishing_temperature_is_greedy_not_a_failure():
    import torch

    from persona.engine.config import GenerationConfig
    from persona.engine.sampling import Sampler

    logits = torch.tensor([[0.5, 3.0, -1.0, 2.9]])
    for temperature in (1e-79, 1e-6):
        token = Sampler(GenerationConfig(temperature=temperature)).next_token(
            logits, torch.tensor([[0]])
        )
        assert token == 1
