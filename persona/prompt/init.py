"""Where a soft prompt starts: the embeddings of a description, sampled vocabulary, or noise.

Starting from real token embeddings (Lester et al., 2021; PEFT's TEXT and SAMPLE_VOCAB inits)
trains faster and more stably than noise: the prompt begins inside the region of embedding space
the frozen model knows how to read.
"""

from __future__ import annotations

from typing import Any

import torch

from persona.errors import ConfigError

INIT_CHOICES = ("auto", "text", "vocab", "random")
COMMON_VOCAB = 5000  # BPE vocabularies put frequent tokens first; sample from those


def init_from_text(
    embedding: torch.Tensor, token_ids: list[int], num_virtual_tokens: int
) -> torch.Tensor:
    """Embeddings of the description's tokens, cycled (or cut) to `num_virtual_tokens` rows."""
    if not token_ids:
        raise ConfigError(
            "--description is empty after tokenization; write a few words describing the persona"
        )
    cycled = [token_ids[i % len(token_ids)] for i in range(num_virtual_tokens)]
    index = torch.tensor(cycled, dtype=torch.long)  # (N,)
    return embedding[index].detach().clone().to(torch.float32)  # (N, D)


def init_from_vocab(
    embedding: torch.Tensor,
    num_virtual_tokens: int,
    generator: torch.Generator,
    exclude: set[int] | None = None,
) -> torch.Tensor:
    """Embeddings of `num_virtual_tokens` tokens drawn from the most common part of the vocabulary."""
    pool = [
        i for i in range(min(COMMON_VOCAB, embedding.shape[0])) if i not in (exclude or set())
    ]  # candidate ids
    picks = torch.randint(len(pool), (num_virtual_tokens,), generator=generator)  # (N,)
    index = torch.tensor(pool, dtype=torch.long)[picks]  # (N,)
    return embedding[index].detach().clone().to(torch.float32)  # (N, D)


def init_random(
    embedding: torch.Tensor, num_virtual_tokens: int, generator: torch.Generator
) -> torch.Tensor:
    """Gaussian noise with the embedding matrix's own scale."""
    std = float(embedding.detach().float().std())
    noise = torch.randn(num_virtual_tokens, embedding.shape[1], generator=generator)  # (N, D)
    return noise * std  # (N, D)


def initial_prompt(
    model: Any,
    tokenizer: Any,
    num_virtual_tokens: int,
    *,
    method: str = "auto",
    description: str | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, str]:
    """(N, D) starting prompt and the method used; `auto` is `text` with a description, else `vocab`."""
    if method not in INIT_CHOICES:
        raise ConfigError(f"--init must be one of {', '.join(INIT_CHOICES)}, got {method!r}")
    if method == "auto":
        method = "text" if description and description.strip() else "vocab"
    embedding = model.get_input_embeddings().weight  # (V, D)
    generator = torch.Generator().manual_seed(seed)
    if method == "text":
        if not description or not description.strip():
            raise ConfigError("--init text needs --description TEXT to start from")
        ids = list(tokenizer(description.strip(), add_special_tokens=False)["input_ids"])
        return init_from_text(embedding, ids, num_virtual_tokens), method
    if method == "vocab":
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        return init_from_vocab(embedding, num_virtual_tokens, generator, exclude=special), method
    return init_random(embedding, num_virtual_tokens, generator), method
