"""Pick the next token: greedy, or sampled with temperature / top-k / top-p / repetition penalty.

The warpers are transformers' own, so our sampling means what `model.generate` means.
"""

from __future__ import annotations

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from persona.engine.config import GenerationConfig


class Sampler:
    def __init__(self, config: GenerationConfig) -> None:
        self.config = config
        processors = LogitsProcessorList()
        if config.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
        if not config.greedy:
            processors.append(TemperatureLogitsWarper(config.temperature))
            if config.top_k > 0:
                processors.append(TopKLogitsWarper(config.top_k))
            if config.top_p < 1.0:
                processors.append(TopPLogitsWarper(config.top_p))
        self.processors = processors
        self.generator = torch.Generator()
        if config.seed is not None:
            self.generator.manual_seed(config.seed)
        else:
            self.generator.seed()

    def next_token(self, logits: torch.Tensor, seen: torch.Tensor) -> int:
        """logits: (1, V) for the last position; seen: (1, S) ids that the repetition penalty covers."""
        scores = self.processors(seen, logits.float())  # (1, V)
        if self.config.greedy:
            return int(scores.argmax(dim=-1))
        probs = torch.softmax(scores, dim=-1)  # (1, V)
        return int(torch.multinomial(probs, num_samples=1, generator=self.generator))
