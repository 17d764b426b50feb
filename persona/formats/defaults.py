"""A persona's defaults inside our single-file format: one JSON string in the safetensors header.

PEFT adapters and KoboldAI zips have no place for them; only `--format persona` carries them.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from persona.engine.config import PersonaDefaults
from persona.errors import ConfigError, PromptFormatError, first_line

if TYPE_CHECKING:
    from persona.prompt.softprompt import SoftPrompt

DEFAULTS_KEY = "persona_defaults"  # header metadata key: PersonaDefaults.to_dict() as JSON


def attach_defaults(prompt: SoftPrompt, defaults: PersonaDefaults) -> None:
    """Write `defaults` into the metadata `prompt` is saved with (nothing when none are set)."""
    record = defaults.to_dict()
    if record:
        prompt.extra[DEFAULTS_KEY] = json.dumps(record, sort_keys=True, ensure_ascii=False)
    else:
        prompt.extra.pop(DEFAULTS_KEY, None)


def take_defaults(prompt: SoftPrompt) -> PersonaDefaults | None:
    """Remove the defaults from `prompt`'s metadata (the library keeps them apart from the tensor)
    and return them validated; None when the file has none. PromptFormatError when they do not
    validate (a file from a newer persona may name settings this one does not know)."""
    text = prompt.extra.pop(DEFAULTS_KEY, None)
    if text is None:
        return None
    try:
        return PersonaDefaults.from_dict(json.loads(text))
    except (ValueError, TypeError) as exc:
        reason = exc if isinstance(exc, ConfigError) else first_line(exc)
        raise PromptFormatError(
            f"the persona defaults in the file are not usable ({reason})"
        ) from None
