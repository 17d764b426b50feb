"""Starter personas: the trained prompts committed in `personas/`, installed into every new library.

Each spec `personas/NAME.toml` whose `prompt_file` exists is a starter. Its sidecar
`personas/NAME.json` (written by `python -m persona.train.sidecar`) carries the held-out
evaluation and the training record, so `persona show NAME` has the same numbers as the run that
made it. Installing reads the safetensors bytes directly, without torch: creating a library (and
so the first `persona list`) stays fast. Every starter goes in with one transaction.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import persona
from persona.errors import ConfigError, PromptFormatError
from persona.model.fingerprint import Fingerprint

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as the `tomli` package
    import tomli as tomllib  # type: ignore[no-redef]

if TYPE_CHECKING:
    from persona.library.library import PersonaLibrary

_PACKAGE = Path(persona.__file__).resolve().parent
# persona/_starters in a wheel (a link to personas/ in the source tree), else personas/ beside the package
STARTERS_DIR = next(
    (path for path in (_PACKAGE / "_starters", _PACKAGE.parent / "personas") if path.is_dir()),
    _PACKAGE.parent / "personas",
)
PREFERRED_DEFAULTS = ("falstaff", "hamlet")  # the chat opens with the first of these installed
TENSOR_KEY = "prompt_embeddings"  # as in persona.prompt.softprompt (not imported: it needs torch)


@dataclass
class PromptFile:
    """A soft-prompt file read without torch: its bytes and what the library records about it."""

    data: bytes  # the whole safetensors file, stored as is
    num_virtual_tokens: int  # N
    hidden_size: int  # D
    sha256: str  # of the raw (N, D) float32 values, as SoftPrompt.sha256
    metadata: dict[str, str]
    fingerprint: Fingerprint | None


@dataclass
class Starter:
    name: str
    description: str
    prompt_path: Path
    tags: list[str] = field(default_factory=list)
    metrics: dict[str, Any] | None = None  # {"nll": {...}, "tokens": n, "examples": m}
    training: dict[str, Any] | None = None


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
            )
        )
    return sorted(starters, key=lambda s: s.name)


def read_prompt_file(path: Path) -> PromptFile:
    """Parse our single-file format (a `prompt_embeddings` F32 (N, D) tensor + string metadata)."""
    data = path.read_bytes()
    try:
        (header_len,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + header_len])
        entry = header[TENSOR_KEY]
        rows, width = (int(n) for n in entry["shape"])
        begin, end = (8 + header_len + int(offset) for offset in entry["data_offsets"])
        metadata = {str(k): str(v) for k, v in (header.get("__metadata__") or {}).items()}
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
    if fingerprint is not None and fingerprint.hidden_size != width:
        raise PromptFormatError(
            f"{path}: tensor width {width} disagrees with its model {fingerprint}"
        )
    return PromptFile(data, rows, width, hashlib.sha256(values).hexdigest(), metadata, fingerprint)


def install_starters(library: PersonaLibrary, folder: Path = STARTERS_DIR) -> list[str]:
    """Add every starter the library lacks, and a default persona if none is set; return the names added."""
    from sqlalchemy import select

    from persona.library.library import DEFAULT_PERSONA_KEY
    from persona.library.models import (
        Persona,
        PersonaTag,
        PromptTensor,
        PromptVersion,
        Setting,
        utcnow,
    )
    from persona.library.records import check_name, check_tags, dump_record

    starters = [
        (starter, read_prompt_file(starter.prompt_path)) for starter in find_starters(folder)
    ]
    added: list[str] = []
    with library.writing() as session:
        have = {name.lower() for name in session.scalars(select(Persona.name))}
        for starter, prompt in starters:
            if starter.name.lower() in have:
                continue
            now = utcnow()
            row = Persona(
                name=check_name(starter.name),
                description=starter.description,
                active_version=1,
                created=now,
                updated=now,
            )
            row.versions.append(
                PromptVersion(
                    version=1,
                    num_virtual_tokens=prompt.num_virtual_tokens,
                    hidden_size=prompt.hidden_size,
                    dtype="float32",
                    sha256=prompt.sha256,
                    model_id=prompt.metadata.get("base_model", ""),
                    fingerprint=str(prompt.fingerprint) if prompt.fingerprint else "",
                    fingerprint_json=prompt.fingerprint.to_json() if prompt.fingerprint else "",
                    init=prompt.metadata.get("init", "text"),
                    training_json=dump_record(starter.training, "training"),
                    metrics_json=dump_record(starter.metrics, "metrics"),
                    created=now,
                    tensor=PromptTensor(data=prompt.data),
                )
            )
            row.tags = [PersonaTag(tag=tag) for tag in check_tags(starter.tags)]
            session.add(row)
            added.append(starter.name)
        names = [starter.name for starter, _ in starters]
        default = next(
            (name for name in PREFERRED_DEFAULTS if name in names), names[0] if names else None
        )
        if default is not None and session.get(Setting, DEFAULT_PERSONA_KEY) is None:
            session.add(Setting(key=DEFAULT_PERSONA_KEY, value=default))
    return added
