"""The personas' keys and values as the gateway hands them to vLLM's persona KV connector.

Every persona goes to vLLM as one (N, W) float32 matrix (persona.engine.prompt_kv): a deep one
as it is, a soft one after one forward pass of its rows through persona's own float32 engine
(loaded for that only, once per new soft persona, then let go; the result is kept on disk). The
matrix is named by the sha256 of its values (a deep persona's own checksum), written once into
`directory` as `SHA256.safetensors` (what a vLLM server on this machine reads) and served from
`GET /v1/personas/{sha256}/kv` (what any other fetches, with the API key).
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import torch

from persona.errors import PersonaError, first_line
from persona.kvconnector.store import KVUnavailable, kv_bytes, kv_sha256, parse_kv
from persona.paths import write_private_atomic
from persona.prompt.softprompt import SoftPrompt

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
SOFT_INDEX = "soft"  # folder of `PERSONA_SHA256` files holding the name of its keys and values


class PersonaKV:
    """(sha256, N) of each persona's keys and values, made once and kept in `directory`."""

    def __init__(self, directory: Path, model: str | None) -> None:
        self.directory = directory
        self.model = model  # the model directory persona's engine loads for soft personas
        self._names: dict[str, tuple[str, int]] = {}  # persona sha256 -> (kv sha256, N)
        self._lock = threading.Lock()
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def name_of(self, persona: SoftPrompt) -> tuple[str, int]:
        """The name and rows of `persona`'s keys and values, made and written if new."""
        key = persona.sha256
        with self._lock:
            if key in self._names:
                return self._names[key]
            named = self._known(persona) or self._make(persona)
            self._names[key] = named
            return named

    def read(self, sha256: str) -> bytes | None:
        """The safetensors bytes named `sha256` (None: not one of ours)."""
        if not _SHA256.match(sha256):
            return None
        try:
            return (self.directory / f"{sha256}.safetensors").read_bytes()
        except OSError:
            return None

    def _known(self, persona: SoftPrompt) -> tuple[str, int] | None:
        """Made before (by this gateway or an earlier one): checked, never trusted blindly."""
        if persona.kind == "deep":
            name = persona.sha256
        else:
            try:
                name = (self.directory / SOFT_INDEX / persona.sha256).read_text().strip()
            except OSError:
                return None
        data = self.read(name)
        if data is None:
            return None
        try:
            return name, parse_kv(data, name).shape[0]
        except KVUnavailable:
            return None  # damaged: made again

    def _make(self, persona: SoftPrompt) -> tuple[str, int]:
        kv = persona.embeddings if persona.kind == "deep" else self._soft_to_kv(persona)  # (N, W)
        name = kv_sha256(kv)
        write_private_atomic(self.directory / f"{name}.safetensors", kv_bytes(kv))
        if persona.kind != "deep":
            index = self.directory / SOFT_INDEX
            index.mkdir(exist_ok=True, mode=0o700)
            write_private_atomic(index / persona.sha256, name.encode())
        return name, kv.shape[0]

    def _soft_to_kv(self, persona: SoftPrompt) -> torch.Tensor:
        """One pass of the soft prompt through persona's own float32 engine (loaded for this)."""
        from persona.engine.prompt_kv import persona_kv
        from persona.engine.torch_backend import torch_backend
        from persona.model.loader import load_chat_model

        try:
            loaded = load_chat_model(self.model, precision="fp32")
        except PersonaError:
            raise
        except Exception as exc:  # noqa: BLE001 - a model that will not load fails this request
            raise PersonaError(
                f"cannot load the model to turn soft persona {persona.name!r} into keys and "
                f"values: {first_line(exc)}"
            ) from None
        return persona_kv(torch_backend(loaded.model), persona)
