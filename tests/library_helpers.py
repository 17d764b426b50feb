"""Small builders shared by the library, format, migration and CLI tests."""

from __future__ import annotations

import torch

from persona.model.fingerprint import Fingerprint
from persona.prompt.softprompt import SoftPrompt

FINGERPRINT = Fingerprint(
    architecture="LlamaForCausalLM",
    hidden_size=32,
    vocab_size=300,
    embedding_sha256="0123456789abcdef",
)
METRICS = {
    "nll": {"no_prompt": 3.5, "written_prompt": 3.1, "persona": 2.25},
    "tokens": 1200,
    "examples": 40,
}
TRAINING = {
    "source": "hamlet.txt",
    "source_sha256": "ab" * 32,
    "speaker": "HAMLET",
    "steps": 200,
    "seconds": 12.5,
    "config": {"lr": 0.03},
}


def make_prompt(seed: int = 0, tokens: int = 5, width: int = 32, name: str = "voice") -> SoftPrompt:
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(tokens, width, generator=generator)  # (N, D)
    return SoftPrompt(
        embeddings=embeddings,
        name=name,
        description=f"voice {seed}",
        fingerprint=FINGERPRINT if width == 32 else None,
        base_model="tiny-llama",
    )
