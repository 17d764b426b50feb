"""Resolve which persona a command speaks with: a library name, a soft-prompt file, or the default."""

from __future__ import annotations

from pathlib import Path

from persona.library.settings import DEFAULT_PERSONA_KEY
from persona.prompt.softprompt import SoftPrompt


def resolve_persona(name: str | None, library: Path | None = None) -> SoftPrompt | None:
    """`name` as a library persona (or a .safetensors file path); None means the library's default, if any."""
    if name is not None and name.endswith(".safetensors") and Path(name).exists():
        return SoftPrompt.load(name)
    from persona.library import open_library

    lib = open_library(library)
    try:
        if name is None:
            name = lib.get_setting(DEFAULT_PERSONA_KEY)
            if not name or not lib.has_persona(name):
                return None
        return lib.get_prompt(name)
    finally:
        lib.close()
