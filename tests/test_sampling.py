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


@pytest.mark.parametrize("settings", [
    {"temperature": 0, "repetition_penalty": 1.3},
    {"temperature": 0.7, "top_p": 0.9, "top_k": 50, "repetition_penalty": 1.1},
    {"temperature": 1.5, "top_p": 0.5, "top_k": 0, "repetition_penalty": 1.0},
    {"temperature": 0.3, "top_p": 1.0, "top_k": 3, "repetition_penalty": 0.8},
    {"temperature": 1.0, "top_p": 0.01, "top_k": 0, "repetition_penalty": 1.0},
])
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
