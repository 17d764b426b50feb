"""A model fingerprint: what a soft prompt must match to be applied to a model.

Two models share a fingerprint when they have the same architecture, hidden size, vocabulary size
and the same input embedding matrix (by hash). A soft prompt lives in the embedding space of the
model it was trained on, so it is only meaningful on a model with the same fingerprint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from persona.errors import PromptFormatError
from persona.model.files import file_identity
from persona.paths import models_dir, write_private_atomic

T = TypeVar("T")
EMBEDDING_HASH_CHARS = 16
DIGEST_CACHE = "embedding-digests.json"  # in the models dir: weights file -> its embedding's hash
DIGEST_CACHE_ENTRIES = 64
DIGEST_CACHE_VERSION = "1"  # bump if what is hashed changes


@dataclass(frozen=True)
class Fingerprint:
    architecture: str
    hidden_size: int
    vocab_size: int
    embedding_sha256: (
        str  # first EMBEDDING_HASH_CHARS hex digits of sha256(float32 embedding bytes)
    )

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
        except (
            ValueError,
            KeyError,
            TypeError,
            OverflowError,
            RecursionError,
        ) as exc:  # 1e999 widths, deep nesting
            raise PromptFormatError(
                f"unreadable model fingerprint {text[:80]!r}: {type(exc).__name__} {str(exc)[:80]}"
            ) from None


def compute_fingerprint(model: Any) -> Fingerprint:
    """Fingerprint a transformers causal LM from its config and input embedding matrix."""
    return fingerprint_of(_architecture(model), model.get_input_embeddings().weight.detach())


def _architecture(model: Any) -> str:
    architectures = getattr(model.config, "architectures", None) or [type(model).__name__]
    return str(architectures[0])


def fingerprint_of(architecture: str, embedding: Any) -> Fingerprint:
    """The fingerprint of a model named `architecture` whose input embedding matrix (V, D) is `embedding`."""
    import torch

    table = embedding.detach().to(torch.float32).contiguous().cpu().numpy()
    digest = hashlib.sha256(memoryview(table).cast("B")).hexdigest()[
        :EMBEDDING_HASH_CHARS
    ]  # no copy of the bytes
    return Fingerprint(
        architecture=architecture,
        hidden_size=int(table.shape[1]),
        vocab_size=int(table.shape[0]),
        embedding_sha256=digest,
    )


def weights_key(weights: Path) -> str | None:
    """What identifies the contents of a weights file for remembered_fingerprint (None: cannot stat it).

    Take it before reading the weights: a file replaced while it is read then misses the store.
    """
    try:
        return f"{file_identity(weights)}|{DIGEST_CACHE_VERSION}"
    except OSError:
        return None


def remembered_fingerprint(model: Any, key: str | None) -> Fingerprint:
    """compute_fingerprint(model), for a model read from the weights file `key` names (weights_key).

    Hashing the embedding costs about 0.08 s at every start for the default model, so its hash is
    remembered in the models dir under the weights file's path, size and modification time (as
    the int8 cache is keyed): a changed file is hashed again. Anything unreadable or unwritable
    there only means hashing.
    """
    weight = model.get_input_embeddings().weight  # (V, D)

    def valid(digest: Any) -> bool:
        return (
            isinstance(digest, str)
            and len(digest) == EMBEDDING_HASH_CHARS
            and all(c in "0123456789abcdef" for c in digest)
        )

    digest = remembered(
        DIGEST_CACHE, key, lambda: compute_fingerprint(model).embedding_sha256, valid
    )
    return Fingerprint(_architecture(model), int(weight.shape[1]), int(weight.shape[0]), digest)


def remembered(
    store_name: str, key: str | None, compute: Callable[[], T], valid: Callable[[Any], bool]
) -> T:
    """compute()'s value for the weights file `key` names (weights_key), remembered in the models
    dir's JSON file `store_name` (the last DIGEST_CACHE_ENTRIES files); a remembered value that is
    not valid(value) is computed again. Anything unreadable or unwritable only means computing."""
    if key is None:
        return compute()
    try:
        store = models_dir() / store_name
    except OSError:
        return compute()
    values = _read_digests(store)
    known: Any = values.get(key)
    if valid(known):
        found: T = known
        return found
    value = compute()
    values.pop(key, None)
    values[key] = value
    _write_digests(store, dict(list(values.items())[-DIGEST_CACHE_ENTRIES:]))
    return value


def _read_digests(store: Path) -> dict[str, Any]:
    try:
        data = json.loads(store.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_digests(store: Path, digests: dict[str, Any]) -> None:
    with contextlib.suppress(
        OSError
    ):  # whole or not at all, whoever writes last; unwritable: hash next time
        write_private_atomic(store, json.dumps(digests, indent=0).encode("utf-8"))
