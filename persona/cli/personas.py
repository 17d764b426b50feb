"""Resolve which persona a command speaks with: a library name, a soft-prompt file, or the default,
together with the persona's own defaults (a file of ours carries them in its header)."""

from __future__ import annotations

from pathlib import Path

from persona.engine.config import PersonaDefaults
from persona.formats.defaults import take_defaults
from persona.library.settings import DEFAULT_PERSONA_KEY
from persona.prompt.softprompt import SoftPrompt


def resolve_persona(
    name: str | None, library: Path | None = None
) -> tuple[SoftPrompt | None, PersonaDefaults | None]:
    """`name` as a library persona (or a .safetensors file path), and its defaults; None means the
    library's default persona, if any."""
    if name is not None and name.endswith(".safetensors") and Path(name).exists():
        prompt = SoftPrompt.load(name)
        return prompt, take_defaults(prompt)
    from persona.library import open_library

    lib = open_library(library)
    try:
        if name is None:
            name = lib.get_setting(DEFAULT_PERSONA_KEY)
            if not name or not lib.has_persona(name):
                return None, None
        return lib.get_prompt(name), lib.get_defaults(name)
    finally:
        lib.close()
