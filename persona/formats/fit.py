"""Does a persona fit a model? Checked from the model's config.json, without loading it: a soft
prompt's width against the hidden size, a deep prompt's layout against the KV cache's."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from persona.errors import ModelError, PromptMismatchError
from persona.prompt.deep import KVLayout

if TYPE_CHECKING:
    from persona.prompt.softprompt import SoftPrompt

WIDTH_KEYS = ("hidden_size", "n_embd", "d_model")


def text_config(model_dir: Path) -> dict:
    """The language model's part of `model_dir/config.json` (its text_config where it has one)."""
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
    text_config = data.get("text_config")
    return text_config if isinstance(text_config, dict) else data


def model_width(model_dir: Path) -> int:
    text = text_config(model_dir)
    for key in WIDTH_KEYS:
        if isinstance(text.get(key), int):
            return int(text[key])
    raise ModelError(
        f"{model_dir / 'config.json'} names no hidden size ({', '.join(WIDTH_KEYS)}); is it a language model?"
    )


def model_layout(model_dir: Path) -> KVLayout | None:
    """The KV cache's layers x kv heads x head dim, as the engine reads it from the loaded config;
    None where config.json names no plain one."""
    numbers = {
        key: value
        for key, value in text_config(model_dir).items()
        if isinstance(value, int) and not isinstance(value, bool)
    }  # a hand-edited config.json may hold anything: only whole numbers describe the cache
    return KVLayout.of_config(SimpleNamespace(**numbers))


def check_width(prompt: SoftPrompt, model_dir: Path) -> None:
    """Refuse a soft prompt whose width (D) differs from the model's hidden size, or a deep prompt
    whose layout differs from the model's KV cache."""
    if prompt.kind == "deep":
        layout = model_layout(model_dir)
        if layout != prompt.layout:
            raise PromptMismatchError(
                f"deep persona {prompt.name!r} holds keys and values for {prompt.layout} (layers x kv heads "
                f"x head dim) but the model {model_dir} has {layout or 'no plain KV cache layout'}; "
                f"pass --model with the model it was made for ({prompt.base_model or 'unknown'})"
            )
        if not prompt.hidden_size:  # a foreign adapter records no model: the layout is all we know
            return
    width = model_width(model_dir)
    if prompt.hidden_size != width:
        raise PromptMismatchError(
            f"{prompt.name!r} has width {prompt.hidden_size} but the model {model_dir} has hidden size {width}; "
            f"pass --model with the model it was made for ({prompt.base_model or 'unknown'})"
        )
