"""What a gateway in front of vLLM holds of the model: the tokenizer, the config and the input
embedding matrix.

The gateway renders a conversation into token ids; the vLLM servers run the network. It reads
one tensor, `model.embed_tokens.weight`, from the checkpoint (safetensors' `safe_open`, the rest
of the file is never read): the fingerprint that decides which personas fit, and the start-up
probe by `prompt_embeds` where a server takes them. The config gives the KV layout every persona
reaches vLLM in. The result is a `LoadedModel` whose `model` carries only the config facts the
engine's helpers ask for, so that `ChatEngine` (rendering, the window, end-of-turn ids,
`prompt_text`) works unchanged on top of `EmbeddingBackend`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from persona.engine.backend import Cache
from persona.engine.chat import ChatEngine
from persona.errors import ModelError, first_line
from persona.model import llama
from persona.model.files import WEIGHTS_FILE
from persona.model.fingerprint import remembered_fingerprint, weights_key
from persona.model.loader import LoadedModel, _load_tokenizer
from persona.model.location import resolve_model_path
from persona.prompt.deep import KVLayout

EMBEDDING_KEY = "model.embed_tokens.weight"
WEIGHTS_INDEX = "model.safetensors.index.json"  # a checkpoint in shards names the embedding's one
NO_MODEL = "the model runs on the vLLM servers; this gateway only embeds token ids"


@dataclass
class ModelFacts:
    """Stands where a loaded network would: the config, the end-of-sequence settings and the
    input embedding matrix only."""

    config: Any  # config.json as attributes (max_position_embeddings, architectures, ...)
    generation_config: Any  # eos_token_id
    embedding: torch.Tensor  # (V, D) float32

    def get_input_embeddings(self) -> Any:
        """As a transformers model answers it, for persona.model.fingerprint."""
        return SimpleNamespace(weight=self.embedding)


class EmbeddingBackend:
    """The backend contract (persona.engine.backend) on the embedding matrix alone: `embed` works,
    everything that computes refuses in one line (the vLLM servers compute)."""

    name = "vllm"
    max_rows = 0
    device = torch.device("cpu")

    def __init__(self, embedding: torch.Tensor, layout: KVLayout | None = None) -> None:
        self.embedding = embedding  # (V, D) float32
        # the model's KV layout: every persona reaches vLLM as keys and values of this shape
        self.layout = layout

    def embed(self, ids: Sequence[int]) -> torch.Tensor:
        return self.embedding[torch.tensor(list(ids), dtype=torch.long)]  # (T, D)

    def new_cache(self) -> Cache:
        raise ModelError(NO_MODEL)

    def prefill(
        self,
        cache: Cache,
        ids: Sequence[int],
        prompt: torch.Tensor | None = None,
        *,
        kind: str = "soft",
    ) -> torch.Tensor:
        raise ModelError(NO_MODEL)

    def decode(self, tokens: Sequence[int], caches: Sequence[Cache]) -> torch.Tensor:
        raise ModelError(NO_MODEL)

    def crop(self, cache: Cache, length: int) -> None:
        raise ModelError(NO_MODEL)

    def copy(self, cache: Cache) -> Cache:
        raise ModelError(NO_MODEL)

    def cache_bytes(self, cache: Cache) -> int:
        raise ModelError(NO_MODEL)


def load_gateway_engine(path: str | os.PathLike[str] | None, label: str) -> ChatEngine:
    """A ChatEngine over the model directory's tokenizer and embedding matrix, never its network.

    `label` goes in `loaded.precision`: what the servers compute in, for the server's record."""
    directory, model_id = resolve_model_path(path)
    config = read_model_config(directory, model_id)
    weights = embedding_file(directory, model_id)
    key = weights_key(weights)  # before reading: see weights_key
    embedding = read_embedding(weights, model_id)
    facts = ModelFacts(config, llama.read_generation_settings(directory, config), embedding)
    loaded = LoadedModel(
        model=facts,
        tokenizer=_load_tokenizer(directory, model_id, for_chat=True),
        # the hash the loader remembers for this weights file, else hashed (and remembered)
        fingerprint=remembered_fingerprint(facts, key),
        model_id=model_id,
        precision=label,
    )
    return ChatEngine(loaded, backend=EmbeddingBackend(embedding, KVLayout.of_config(config)))


def read_model_config(directory: Path, model_id: str) -> Any:
    """config.json as attributes, any architecture (vLLM runs more than persona's own decoder)."""
    try:
        data = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read config.json of {model_id!r}: {first_line(exc)}") from None
    if not isinstance(data, dict) or not data.get("architectures"):
        raise ModelError(f"config.json of {model_id!r} names no architecture")
    data.setdefault("max_position_embeddings", llama.DEFAULTS["max_position_embeddings"])
    return SimpleNamespace(**data)


def embedding_file(directory: Path, model_id: str) -> Path:
    """The safetensors file that holds the input embedding (one of the shards, if sharded)."""
    index_file = directory / WEIGHTS_INDEX
    if (directory / WEIGHTS_FILE).is_file() or not index_file.is_file():
        return directory / WEIGHTS_FILE
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
        return directory / index["weight_map"][EMBEDDING_KEY]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(
            f"{WEIGHTS_INDEX} of {model_id!r} does not say where {EMBEDDING_KEY} is: "
            f"{first_line(exc)}"
        ) from None


def read_embedding(weights: Path, model_id: str) -> torch.Tensor:
    """The input embedding matrix (V, D) as float32, read alone from the checkpoint."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as handle:
            embedding = handle.get_tensor(EMBEDDING_KEY)  # (V, D)
    except Exception as exc:
        raise ModelError(
            f"cannot read the input embedding {EMBEDDING_KEY} of {model_id!r}: {first_line(exc)}"
        ) from None
    return embedding.to(torch.float32)
