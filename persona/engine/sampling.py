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


def top_p_filter(scores: torch.Tensor, p: float) -> torch.Tensor:
    ordered, order = torch.sort(scores, descending=False)  # ascending: the tail comes first
    mass = ordered.softmax(dim=-1).cumsum(dim=-1)
    drop = mass <= (1 - p)
    drop[..., -1:] = False  # the likeliest token always stays
    return scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))


class Sampler:
    def __init__(self, config: GenerationConfig, device: torch.device | str = "cpu") -> None:
        """device: where the logits will be (the draw's generator lives with them)."""
        self.config = config
        self.generator = torch.Generator(device=device)
        if config.seed is not None:
            self.generator.manual_seed(config.seed)
        else:
            self.generator.seed()

    def process(self, logits: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """The scores the next token is chosen from: (B, V), -inf where a token cannot be chosen.

        logits: (B, V) of the last position; seen: (B, S) ids that the repetition penalty covers.
        """
        scores, ids = self._candidates(logits, seen)
        if ids is None:
            return scores
        return torch.full_like(logits, float("-inf"), dtype=scores.dtype).scatter(1, ids, scores)

    def next_token(self, logits: torch.Tensor, seen: torch.Tensor) -> int:
        """logits: (1, V) for the last position; seen: (1, S) ids that the repetition penalty covers."""
        scores, ids = self._candidates(logits, seen)  # (1, V) or (1, k)
        if self.config.greedy:
            return int(scores.argmax(dim=-1))
        probs = torch.softmax(scores, dim=-1)
        choice = torch.multinomial(probs, num_samples=1, generator=self.generator)  # (1, 1)
        return int(choice) if ids is None else int(ids.gather(1, choice))

    def _candidates(
        self, logits: torch.Tensor, seen: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(scores, ids): the scores to choose from and, where they are not the whole vocabulary, the
        vocabulary ids they belong to (None: scores is (B, V), one per token).

        With top-k on, top-p and the draw only need the k survivors: sorting and sampling over the
        whole vocabulary (49,152 tokens for the default model) cost about 3.5 ms a token here, a
        tenth of a decode step, for the same choice. A tie at the k-th score (top-k then keeps
        more than k) takes the whole-vocabulary path.
        """
        config = self.config
        scores = logits.float()
        if config.repetition_penalty != 1.0:
            scores = repetition_penalty(scores, seen, config.repetition_penalty)
        if config.greedy:
            return scores, None
        scores = scores / config.temperature
        if 0 < config.top_k < scores.shape[-1]:
            values, ids = torch.topk(scores, config.top_k)  # (B, k) highest first
            if bool(
                ((scores >= values[..., -1:]).sum(dim=-1) == config.top_k).all()
            ):  # exactly these k survive
                return (top_p_filter(values, config.top_p) if config.top_p < 1.0 else values), ids
            scores = scores.masked_fill(
                scores < values[..., -1:], float("-inf")
            )  # top-k with its ties, as transformers keeps them
        if config.top_p < 1.0:
            scores = top_p_filter(scores, config.top_p)
        return scores, None
