"""Persona file formats: our own safetensors file, PEFT adapters (prompt tuning for a soft persona,
prefix tuning for a deep one), KoboldAI zips (soft personas only).

`read_prompt(path)` detects the format; `write_prompt(prompt, path, fmt)` exports. Every reader
refuses pickles and bounds sizes, and every round trip is exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from persona.errors import PromptFormatError
from persona.formats.files import PICKLE_ADVICE

if TYPE_CHECKING:
    from persona.prompt.softprompt import SoftPrompt

FORMATS = ("persona", "peft", "kobold")
ZIP_MAGIC = b"PK\x03\x04"


def detect_format(path: Path) -> str:
    """'peft' for an adapter directory, 'kobold' for a zip, 'persona' for a safetensors file."""
    path = Path(path)
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except OSError as exc:  # e.g. a name too long for the file system
        raise PromptFormatError(f"{path}: cannot read ({exc.strerror})") from None
    if not exists:
        raise PromptFormatError(f"{path}: no such file or directory")
    if is_dir:
        if (path / "adapter_config.json").is_file():
            return "peft"
        raise PromptFormatError(
            f"{path}: a directory without adapter_config.json; expected a PEFT prompt- or prefix-tuning adapter"
        )
    if path.name == "adapter_config.json":
        return "peft"
    try:
        with path.open("rb") as handle:
            head = handle.read(9)
    except OSError as exc:
        raise PromptFormatError(f"{path}: cannot read ({exc.strerror})") from None
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise PromptFormatError(f"{path}: {PICKLE_ADVICE}")
    if head.startswith(ZIP_MAGIC):
        return "kobold"
    if len(head) == 9 and head[8:9] == b"{":
        return "persona"  # safetensors: 8-byte little-endian header length, then the JSON header
    raise PromptFormatError(
        f"{path}: not a soft prompt persona can read; expected a .safetensors file, a KoboldAI .zip or a PEFT adapter directory"
    )


def read_prompt(path: Path) -> SoftPrompt:
    """Read a soft prompt in any supported format (detected from the content)."""
    prompt = _read(Path(path))
    prompt.check_consistent()
    return prompt


def _read(path: Path) -> SoftPrompt:
    fmt = detect_format(path)
    if fmt == "peft":
        from persona.formats.peft import read_peft_adapter

        return read_peft_adapter(path.parent if path.name == "adapter_config.json" else path)
    if fmt == "kobold":
        from persona.formats.kobold import read_kobold_zip

        return read_kobold_zip(path)
    from persona.prompt.softprompt import SoftPrompt

    prompt = SoftPrompt.load(path)
    if prompt.name == "imported":  # a safetensors file without our metadata
        prompt.name = path.stem
    return prompt


def write_prompt(
    prompt: SoftPrompt, path: Path, fmt: str = "persona", *, force: bool = False
) -> Path:
    """Export `prompt` to `path` as `fmt` (one of FORMATS); files are created owner-only."""
    path = Path(path)
    if fmt == "peft":
        from persona.formats.peft import write_peft_adapter

        return write_peft_adapter(prompt, path, force=force)
    if fmt == "kobold":
        from persona.formats.kobold import write_kobold_zip

        return write_kobold_zip(prompt, path, force=force)
    if fmt != "persona":
        raise PromptFormatError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    from persona.formats.files import refuse_existing, writing_to

    refuse_existing(path, force)
    with writing_to(path):
        return prompt.save(path)
