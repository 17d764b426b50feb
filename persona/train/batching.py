"""Length-bucketed, seeded batches: examples of similar length train together, so little is padding.

Each epoch shuffles the examples, cuts them into pools of `BUCKET_POOL_BATCHES` batches, sorts
each pool by length, slices it into batches and shuffles the batch order. The whole schedule is
a pure function of (lengths, batch size, seed): a resumed run sees exactly the batches the
uninterrupted run would have.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from persona.dialogue.encode import EncodedExample
from persona.prompt.inject import IGNORE_INDEX

BUCKET_POOL_BATCHES = 16


def epoch_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int
) -> list[list[int]]:
    """Index batches covering every example once, similar lengths together."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool_size = batch_size * BUCKET_POOL_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), pool_size):
        pool = sorted(order[start : start + pool_size], key=lambda i: lengths[i])
        batches.extend(pool[i : i + batch_size] for i in range(0, len(pool), batch_size))
    rng.shuffle(batches)
    return batches


def schedule(lengths: Sequence[int], batch_size: int, seed: int, steps: int) -> list[list[int]]:
    """The batch of every step 0..steps-1, epoch after epoch."""
    if not lengths:
        return []
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < steps:
        batches.extend(epoch_batches(lengths, batch_size, seed, epoch))
        epoch += 1
    return batches[:steps]


def collate(
    examples: Sequence[EncodedExample], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, labels), each (B, T) with T the longest example."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)  # (B, T)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    for row, example in enumerate(examples):
        size = len(example.input_ids)
        input_ids[row, :size] = torch.tensor(example.input_ids)
        attention_mask[row, :size] = 1
        labels[row, :size] = torch.tensor(example.labels)
    return input_ids, attention_mask, labels


def reply_tokens(examples: Sequence[EncodedExample]) -> int:
    """How many tokens the loss is a mean over: every labelled token, the soft prompt in front
    predicting the first. Counted here from the examples, so every rank of a data-parallel run
    knows the global batch's count without asking the others."""
    return sum(sum(1 for label in e.labels if label != IGNORE_INDEX) for e in examples)


def pad_token_id(tokenizer: object) -> int:
    """The tokenizer's pad id, else its end-of-sequence id, else 0 (padding is masked anyway)."""
    for attribute in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attribute, None)
        if isinstance(value, int):
            return value
    return 0
