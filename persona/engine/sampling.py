"""Pick the next token: greedy, or sampled with temperature / top-k / top-p / repetition penalty.

Each step means what it means in transformers' `model.generate` (tests compare the two on random
logits), written here so that chat starts without importing transformers' generation stack:
the repetition penalty divides positive and multiplies negative logits of tokens already seen
(CTRL), then temperature, then top-k keeps the k highest, then top-p keeps the smallest set of
highest-probability tokens whose mass reaches p (always at least one).
"""

from __future__ import annotations

import torch

from persona.engine.config import GenerationConfig


def repetition_penalty(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """scores: (B, V); seen: (B, S) token ids already in the conversation."""
    picked = torch.gather(scores, 1, seen)  # (B, S)
    picked = torch.where(picked < 0, picked * penalty, picked / penalty)
    return scores.scatter(1, seen, picked)


def top_k_filter(scores: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, scores.shape[-1])
    threshold = torch.topk(scores, k).values[..., -1:]  # (B, 1)
    return scores.masked_fill(scores < threshold, float("-inf"))


def top_p_filter(scores: torch.Tensor, p: float) -> torch.Tensor:
    ordered, order = torch.sort(scores, descending=False)  # ascending: the tail comes first
    mass = ordered.softmax(dim=-1).cumsum(dim=-1)
    drop = mass <= (1 - p)
    drop[..., -1:] = False  # the likeliest token always stays
    return scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))


class Sampler:
    def __init__(self, config: GenerationConfig) -> None:
        self.config = config
        self.generator = torch.Generator()
        if config.seed is not None:
            self.generator.manual_seed(config.seed)
        else:
            self.generator.seed()

    def process(self, logits: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """The scores the next token is chosen from: (1, V) logits of the last position, seen (1, S)."""
        config = self.config
        scores = logits.float()
        if config.repetition_penalty != 1.0:
            scores = repetition_penalty(scores, seen, config.repetition_penalty)
        if not config.greedy:
            scores = scores / config.temperature
            if config.top_k > 0:
                scores = top_k_filter(scores, config.top_k)
            if config.top_p < 1.0:
                scores = top_p_filter(scores, config.top_p)
        return scores

    def next_token(self, logits: torch.Tensor, seen: torch.Tensor) -> int:
        """logits: (1, V) for the last position; seen: (1, S) ids that the repetition penalty covers."""
        scores = self.process(logits, seen)  # (1, V)
        if self.config.greedy:
            return int(scores.argmax(dim=-1))
        probs = torch.softmax(scores, dim=-1)  # (1, V)
        return int(torch.multinomial(probs, num_samples=1, generator=self.generator))
