"""Does a soft prompt fit a model? Checked from the model's config.json, without loading it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from persona.errors import ModelError, PromptMismatchError

if TYPE_CHECKING:
    from persona.prompt.softprompt import SoftPrompt

WIDTH_KEYS = ("hidden_size", "n_embd", "d_model")


def model_width(model_dir: Path) -> int:
    config = model_dir / "config.json"
    try:
        data = json.loads(config.read_text())
    except FileNotFoundError:
        raise ModelError(
            f"{model_dir} is not a Hugging Face model directory (no config.json); pass the folder that holds it"
        ) from None
    except (OSError, ValueError, RecursionError) as exc:
        raise ModelError(f"cannot read {config} ({str(exc)[:120]})") from None
    if not isinstance(data, dict):
        raise ModelError(
            f"{config} is not a model config (a JSON {type(data).__name__}, expected an object)"
        )
    text = data.get("text_config") if isinstance(data.get("text_config"), dict) else data
    for key in WIDTH_KEYS:
        if isinstance(text.get(key), int):
            return int(text[key])
    raise ModelError(
        f"{config} names no hidden size ({', '.join(WIDTH_KEYS)}); is it a language model?"
    )


def check_width(prompt: SoftPrompt, model_dir: Path) -> None:
    """Refuse a prompt whose width (D) differs from the model's hidden size."""
    width = model_width(model_dir)
    if prompt.hidden_size != width:
        raise PromptMismatchError(
            f"{prompt.name!r} has width {prompt.hidden_size} but the model {model_dir} has hidden size {width}; "
            f"pass --model with the model it was made for ({prompt.base_model or 'unknown'})"
        )
