"""A model fingerprint: what a soft prompt must match to be applied to a model.

Two models share a fingerprint when they have the same architecture, hidden size, vocabulary size
and the same input embedding matrix (by hash). A soft prompt lives in the embedding space of the
model it was trained on, so it is only meaningful on a model with the same fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from persona.errors import PromptFormatError

EMBEDDING_HASH_CHARS = 16


@dataclass(frozen=True)
class Fingerprint:
    architecture: str
    hidden_size: int
    vocab_size: int
    embedding_sha256: str  # first EMBEDDING_HASH_CHARS hex digits of sha256(float32 embedding bytes)

    def __str__(self) -> str:
        return f"{self.architecture}/d{self.hidden_size}/v{self.vocab_size}/{self.embedding_sha256}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Fingerprint:
        try:
            data: Any = json.loads(text)
            return cls(
                architecture=str(data["architecture"]),
                hidden_size=int(data["hidden_size"]),
                vocab_size=int(data["vocab_size"]),
                embedding_sha256=str(data["embedding_sha256"]),
            )
        except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:  # 1e999 widths, deep nesting
            raise PromptFormatError(f"unreadable model fingerprint {text[:80]!r}: {type(exc).__name__} {str(exc)[:80]}") from None


def compute_fingerprint(model: Any) -> Fingerprint:
    """Fingerprint a transformers causal LM from its config and input embedding matrix."""
    weight = model.get_input_embeddings().weight.detach()  # (V, D)
    architectures = getattr(model.config, "architectures", None) or [type(model).__name__]
    return fingerprint_of(str(architectures[0]), weight)


def fingerprint_of(architecture: str, embedding: Any) -> Fingerprint:
    """The fingerprint of a model named `architecture` whose input embedding matrix (V, D) is `embedding`."""
    import torch

    table = embedding.detach().to(torch.float32).contiguous().cpu().numpy()
    digest = hashlib.sha256(memoryview(table).cast("B")).hexdigest()[:EMBEDDING_HASH_CHARS]  # no copy of the bytes
    return Fingerprint(
        architecture=architecture,
        hidden_size=int(table.shape[1]),
        vocab_size=int(table.shape[0]),
        embedding_sha256=digest,
    )
