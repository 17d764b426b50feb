"""A soft prompt: an (N, D) float32 matrix of learned virtual-token embeddings plus its metadata.

A persona is one of two kinds: `soft` (the input-layer embeddings above, prompt tuning) or `deep`
(keys and values at every layer, prefix tuning: an (N, W) matrix in PEFT's PREFIX_TUNING layout,
W = layers x 2 x kv_heads x head_dim, see persona.prompt.deep). Both are N virtual positions in
front of the conversation; they differ in where the model takes them in.

Our own file format is a single safetensors file (see fileformat.py): the tensor under the key
`prompt_embeddings` (the key PEFT uses) and the metadata as strings in the safetensors header.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from persona.errors import PromptFormatError, PromptMismatchError, first_line
from persona.model.files import HEADER_LENGTH_BYTES, header_length, header_metadata, parse_header
from persona.model.fingerprint import Fingerprint
from persona.paths import write_private_atomic
from persona.prompt.deep import KINDS, KVLayout
from persona.prompt.fileformat import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MAX_FILE_BYTES,
    TENSOR_KEY,
    values_sha256,
)

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAX_FILE_BYTES",
    "TENSOR_KEY",
    "SoftPrompt",
]
MAX_HEADER_BYTES = 100 * 1024 * 1024
INIT_METHODS = ("text", "vocab", "random", "imported")


@dataclass
class SoftPrompt:
    embeddings: torch.Tensor  # (N, D) float32
    name: str
    description: str = ""
    fingerprint: Fingerprint | None = None
    init: str = "random"  # how it was initialised: text | vocab | random | imported
    base_model: str = ""  # human-readable id of the model it was trained on
    # the written system message the prompt was trained under, and so speaks after ('' for the
    # empty one): the description carries the identity, the soft prompt the style
    system: str = ""
    kind: str = (
        "soft"  # soft: input embeddings (N, D) | deep: keys and values at every layer (N, W)
    )
    layout: KVLayout | None = None  # the KV cache a deep prompt fits (None for a soft one)
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.embeddings, torch.Tensor):
            raise PromptFormatError(
                f"soft prompt {self.name!r}: embeddings must be a tensor, got {type(self.embeddings).__name__}"
            )
        if self.embeddings.dim() != 2 or 0 in self.embeddings.shape:
            raise PromptFormatError(
                f"soft prompt {self.name!r}: expected a non-empty (num_virtual_tokens, hidden_size) matrix, got shape {tuple(self.embeddings.shape)}"
            )
        if not self.embeddings.is_floating_point():
            raise PromptFormatError(
                f"soft prompt {self.name!r}: expected floating-point values, got {self.embeddings.dtype}"
            )
        self.embeddings = self.embeddings.detach().to(torch.float32).contiguous()
        if not torch.isfinite(self.embeddings).all():
            raise PromptFormatError(f"soft prompt {self.name!r}: contains NaN or infinite values")
        if not self.name or not self.name.strip():
            raise PromptFormatError("soft prompt: the name is empty")
        if self.kind not in KINDS:
            raise PromptFormatError(
                f"persona {self.name!r}: unknown kind {self.kind!r}; expected one of {', '.join(KINDS)}"
            )
        if (self.kind == "deep") != (self.layout is not None):
            raise PromptFormatError(
                f"persona {self.name!r}: a deep prompt needs its layout and a soft one has none "
                f"(kind {self.kind!r}, layout {self.layout}); the file is damaged, re-export it"
            )
        if self.layout is not None and self.layout.width != self.width:
            raise PromptFormatError(
                f"deep prompt {self.name!r} has width {self.width} but its layout {self.layout} "
                f"needs {self.layout.width}; the file is damaged, re-export it"
            )

    @property
    def num_virtual_tokens(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def width(self) -> int:
        """The tensor's columns: D for a soft prompt, W (every layer's keys and values) for a deep one."""
        return int(self.embeddings.shape[1])

    @property
    def hidden_size(self) -> int:
        """D, the hidden size of the model the prompt is for (0 for a deep prompt of unknown model)."""
        if self.kind == "soft":
            return self.width
        return self.fingerprint.hidden_size if self.fingerprint is not None else 0

    @property
    def sha256(self) -> str:
        return values_sha256(self.embeddings.numpy().tobytes())

    def check_consistent(self) -> None:
        """Refuse a prompt whose recorded model has another width than its tensor: the file was
        damaged or mislabelled."""
        fingerprint = self.fingerprint
        if (
            self.kind == "soft"
            and fingerprint is not None
            and fingerprint.hidden_size != self.width
        ):
            raise PromptMismatchError(
                f"soft prompt {self.name!r} has width {self.hidden_size} but records a model of hidden size "
                f"{fingerprint.hidden_size} ({fingerprint}); the file is mislabelled, re-export it from where it was trained"
            )

    def check_fits(self, fingerprint: Fingerprint, layout: KVLayout | None = None) -> None:
        """Refuse, in one line naming both, a model this prompt was not trained for. A deep prompt
        is also checked against the model's KV `layout` where the caller knows it."""
        if self.kind == "deep" and layout is not None and self.layout != layout:
            raise PromptMismatchError(
                f"deep persona {self.name!r} holds keys and values for {self.layout} (layers x kv heads x head dim) "
                f"but the model {fingerprint} has {layout}; use the model it was trained on "
                f"({self.fingerprint or self.base_model or 'unknown'}) or retrain it"
            )
        if self.kind == "soft" and self.width != fingerprint.hidden_size:
            raise PromptMismatchError(
                f"persona {self.name!r} has width {self.hidden_size} but the model {fingerprint} has hidden size "
                f"{fingerprint.hidden_size}; use the model it was trained on ({self.fingerprint or self.base_model or 'unknown'}) or retrain it"
            )
        if self.fingerprint is not None and self.fingerprint != fingerprint:
            raise PromptMismatchError(
                f"persona {self.name!r} was trained for model {self.fingerprint}, not {fingerprint}; "
                "use --model to pick the model it was trained on, or retrain it for this one"
            )

    # ---- our single-file format -------------------------------------------------------------

    def metadata(self) -> dict[str, str]:
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "description": self.description,
            "init": self.init,
            "base_model": self.base_model,
        }
        if self.fingerprint is not None:
            meta["fingerprint"] = self.fingerprint.to_json()
        if self.system:
            meta["system"] = self.system
        if self.layout is not None:  # soft prompts' files stay as they always were
            meta["kind"] = self.kind
            meta["layout"] = str(self.layout)
        for key, value in self.extra.items():
            meta.setdefault(key, str(value))
        return meta

    def to_bytes(self) -> bytes:
        return st_save({TENSOR_KEY: self.embeddings}, metadata=self.metadata())

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "soft prompt") -> SoftPrompt:
        if len(data) > MAX_FILE_BYTES:
            raise PromptFormatError(
                f"{source}: {len(data)} bytes is far too large for a soft prompt"
            )
        tensors, meta = _read_safetensors(data, source)
        if TENSOR_KEY not in tensors:
            raise PromptFormatError(
                f"{source}: no tensor named {TENSOR_KEY!r} (found {sorted(tensors)[:5]})"
            )
        known = {
            "format",
            "format_version",
            "name",
            "description",
            "init",
            "base_model",
            "fingerprint",
            "system",
            "kind",
            "layout",
        }
        fingerprint = (
            Fingerprint.from_json(meta["fingerprint"]) if meta.get("fingerprint") else None
        )
        return cls(
            embeddings=tensors[TENSOR_KEY],
            name=meta.get("name") or "imported",
            description=meta.get("description", ""),
            fingerprint=fingerprint,
            init=meta.get("init", "imported"),
            base_model=meta.get("base_model", ""),
            system=meta.get("system", ""),
            kind=meta.get("kind", "soft"),
            layout=KVLayout.parse(meta["layout"]) if "layout" in meta else None,
            extra={k: v for k, v in meta.items() if k not in known},
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        return write_private_atomic(Path(path), self.to_bytes())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SoftPrompt:
        path = Path(path)
        try:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise PromptFormatError(f"{path}: {size} bytes is far too large for a soft prompt")
            data = path.read_bytes()
        except FileNotFoundError:
            raise PromptFormatError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise PromptFormatError(
                f"{path}: is a directory, expected a .safetensors soft-prompt file"
            ) from None
        except OSError as exc:
            raise PromptFormatError(f"{path}: cannot read ({exc.strerror})") from None
        return cls.from_bytes(data, source=str(path))


def _read_safetensors(data: bytes, source: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Parse safetensors bytes (no pickle anywhere); any malformation becomes a PromptFormatError."""
    if len(data) < HEADER_LENGTH_BYTES:
        raise PromptFormatError(f"{source}: not a safetensors file (too short)")
    length = header_length(data)
    if length > min(len(data) - HEADER_LENGTH_BYTES, MAX_HEADER_BYTES):
        raise PromptFormatError(
            f"{source}: not a safetensors file (header length {length} is out of bounds)"
        )
    try:
        meta = header_metadata(parse_header(data)[0])
        tensors = st_load(data)
    except (
        SafetensorError,
        ValueError,
        UnicodeDecodeError,
        TypeError,
        AttributeError,
        RecursionError,
    ) as exc:
        raise PromptFormatError(
            f"{source}: broken safetensors file ({first_line(exc, 120)})"
        ) from None
    return tensors, meta
