"""Starter personas: the trained prompts committed in `personas/`, installed into every new library.

Each spec `personas/NAME.toml` whose `prompt_file` exists is a starter. Its sidecar
`personas/NAME.json` (written by `python -m persona.train.sidecar`) carries the held-out
evaluation and the training record, so `persona show NAME` has the same numbers as the run that
made it. The prompt files are read here without torch, so creating a library (and so the first
`persona list`) stays fast; PersonaLibrary.install_starters writes them, in the transaction that
creates the library.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import persona
from persona.errors import ConfigError, PromptFormatError
from persona.model.files import header_metadata, parse_header
from persona.model.fingerprint import Fingerprint
from persona.prompt.fileformat import TENSOR_KEY, values_sha256
from persona.prompt.layout import KINDS, KVLayout

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as the `tomli` package
    import tomli as tomllib  # type: ignore[no-redef]

_PACKAGE = Path(persona.__file__).resolve().parent
# persona/_starters in a wheel (a link to personas/ in the source tree), else personas/ beside the package
STARTERS_DIR = next(
    (path for path in (_PACKAGE / "_starters", _PACKAGE.parent / "personas") if path.is_dir()),
    _PACKAGE.parent / "personas",
)
PREFERRED_DEFAULTS = ("falstaff", "hamlet")  # the chat opens with the first of these installed


@dataclass
class PromptFile:
    """A prompt file read without torch: its bytes and what the library records about it."""

    data: bytes  # the whole safetensors file, stored as is
    num_virtual_tokens: int  # N
    hidden_size: int  # D of the model (0 for a deep prompt that records none)
    sha256: str  # of the raw (N, D) or (N, W) float32 values, as SoftPrompt.sha256
    metadata: dict[str, str]
    fingerprint: Fingerprint | None
    kind: str = "soft"  # soft | deep (persona.prompt.deep)


@dataclass
class Starter:
    name: str
    description: str
    prompt_path: Path
    tags: list[str] = field(default_factory=list)
    metrics: dict[str, Any] | None = None  # {"nll": {...}, "tokens": n, "examples": m}
    training: dict[str, Any] | None = None
    # the spec's [defaults] as written (`persona set` keys); the library checks them as it stores them
    defaults: Any = field(default_factory=dict)


@dataclass
class StarterPrompt:
    """A starter and its prompt file, read: what a library stores for it."""

    starter: Starter
    prompt: PromptFile


def find_starters(folder: Path = STARTERS_DIR) -> list[Starter]:
    """Every spec in `folder` whose trained prompt file is there, sorted by name."""
    starters = []
    for spec_path in sorted(folder.glob("*.toml")):
        try:
            spec = tomllib.loads(spec_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"starter spec {spec_path} cannot be read ({exc})") from None
        prompt_file = spec.get("prompt_file")
        if not isinstance(prompt_file, str) or not (spec_path.parent / prompt_file).is_file():
            continue  # a recipe not trained yet
        sidecar = spec_path.with_suffix(".json")
        record: dict[str, Any] = (
            json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.is_file() else {}
        )
        starters.append(
            Starter(
                name=str(spec["name"]),
                description=str(spec.get("description", "")).strip(),
                prompt_path=spec_path.parent / prompt_file,
                tags=list(spec.get("tags", [])),
                metrics=record.get("metrics"),
                training=record.get("training"),
                defaults=spec.get("defaults", {}),
            )
        )
    return sorted(starters, key=lambda s: s.name)


def read_prompt_file(path: Path) -> PromptFile:
    """Parse our single-file format (a `prompt_embeddings` F32 (N, D) or, deep, (N, W) tensor +
    string metadata)."""
    data = path.read_bytes()
    try:
        header, data_start = parse_header(data)
        entry = header[TENSOR_KEY]
        rows, width = (int(n) for n in entry["shape"])
        begin, end = (data_start + int(offset) for offset in entry["data_offsets"])
        metadata = header_metadata(header)
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise PromptFormatError(f"{path}: not a persona soft-prompt file ({exc})") from None
    values = data[begin:end]
    if entry.get("dtype") != "F32" or len(values) != rows * width * 4 or rows < 1:
        raise PromptFormatError(
            f"{path}: expected a float32 (N, D) tensor, got {entry.get('dtype')} {entry.get('shape')}"
        )
    fingerprint = (
        Fingerprint.from_json(metadata["fingerprint"]) if metadata.get("fingerprint") else None
    )
    kind = metadata.get("kind", "soft")
    if kind not in KINDS:
        raise PromptFormatError(f"{path}: unknown prompt kind {kind!r}")
    if kind == "deep":  # keys and values at every layer: its layout says how wide
        layout = KVLayout.parse(metadata.get("layout", ""))
        if layout.width != width:
            raise PromptFormatError(
                f"{path}: tensor width {width} disagrees with its layout {layout} ({layout.width})"
            )
        hidden_size = fingerprint.hidden_size if fingerprint is not None else 0
    elif fingerprint is not None and fingerprint.hidden_size != width:
        raise PromptFormatError(
            f"{path}: tensor width {width} disagrees with its model {fingerprint}"
        )
    else:
        hidden_size = width
    return PromptFile(data, rows, hidden_size, values_sha256(values), metadata, fingerprint, kind)


def load_starters(folder: Path = STARTERS_DIR) -> list[StarterPrompt]:
    """Every starter of `folder` with its prompt file read (PersonaLibrary.install_starters takes these)."""
    return [
        StarterPrompt(starter, read_prompt_file(starter.prompt_path))
        for starter in find_starters(folder)
    ]


def default_starter(names: list[str]) -> str | None:
    """The persona a library with these starters opens with: the first preferred one, else the first."""
    return next((name for name in PREFERRED_DEFAULTS if name in names), names[0] if names else None)
