"""PEFT adapters: a directory with adapter_config.json and adapter_model.safetensors.

A soft persona is a PROMPT_TUNING adapter, a deep one a PREFIX_TUNING adapter. Both keep their
tensor under the key `prompt_embeddings`, the same key as our own file: a soft prompt (N, D) that
PEFT prepends to the input embeddings exactly as persona does, or a deep prompt (N, W) in the very
layout persona keeps it (persona.prompt.deep), so an adapter is a persona and back. Our metadata
rides along in the safetensors header (PEFT ignores it), which makes the round trip exact.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from safetensors.torch import save as st_save

from persona.errors import PromptFormatError
from persona.formats.files import (
    MAX_JSON_BYTES,
    MAX_TENSOR_BYTES,
    read_bounded,
    refuse_existing,
    writing_to,
)
from persona.paths import write_private_atomic
from persona.prompt.deep import KVLayout
from persona.prompt.fileformat import FORMAT_NAME, TENSOR_KEY
from persona.prompt.softprompt import SoftPrompt

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLED_WEIGHTS_FILE = "adapter_model.bin"
MARKER_KEY = "persona_format"  # our marker; PEFT's own "format" key must stay "pt"
PEFT_TYPES = {"soft": "PROMPT_TUNING", "deep": "PREFIX_TUNING"}  # persona kind -> PEFT method
KINDS_OF_PEFT_TYPES = {peft_type: kind for kind, peft_type in PEFT_TYPES.items()}


def read_peft_adapter(path: Path) -> SoftPrompt:
    """Import a PEFT PROMPT_TUNING (soft) or PREFIX_TUNING (deep) adapter directory saved by
    `save_pretrained` (safetensors only)."""
    config = _read_config(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        if (path / PICKLED_WEIGHTS_FILE).is_file():
            raise PromptFormatError(
                f"{path}: the adapter weights are a pickle ({PICKLED_WEIGHTS_FILE}), which persona never loads; "
                "re-save it with save_pretrained(..., safe_serialization=True)"
            )
        raise PromptFormatError(f"{path}: no {WEIGHTS_FILE} next to {CONFIG_FILE}")
    prompt = SoftPrompt.from_bytes(
        read_bounded(weights, MAX_TENSOR_BYTES, "a prompt adapter"), source=str(weights)
    )
    ours = prompt.extra.pop(MARKER_KEY, None) == FORMAT_NAME
    if KINDS_OF_PEFT_TYPES[config["peft_type"]] == "deep":
        prompt = _as_deep(prompt, config, path)
    else:
        _check_soft(prompt, config, path)
    if not ours:
        prompt.name = path.resolve().name
        prompt.init = "imported"
        prompt.description = ""
    if config.get("base_model_name_or_path") and not prompt.base_model:
        prompt.base_model = str(config["base_model_name_or_path"])
    return prompt


def _check_soft(prompt: SoftPrompt, config: dict, path: Path) -> None:
    """Refuse a PROMPT_TUNING adapter whose tensor is not the (N, D) its config names."""
    if prompt.kind != "soft":
        raise PromptFormatError(
            f"{path}: {CONFIG_FILE} says PROMPT_TUNING but the weights hold a deep prompt "
            f"({prompt.layout}); the adapter is inconsistent, re-export it"
        )
    expected = (config.get("num_virtual_tokens"), config.get("token_dim"))
    shape = (prompt.num_virtual_tokens, prompt.width)
    if any(want is not None and want != have for want, have in zip(expected, shape, strict=True)):
        raise PromptFormatError(
            f"{path}: the tensor has shape {shape} but {CONFIG_FILE} says num_virtual_tokens={expected[0]}, "
            f"token_dim={expected[1]}; the adapter is inconsistent, re-save it"
        )


def _as_deep(prompt: SoftPrompt, config: dict, path: Path) -> SoftPrompt:
    """The PREFIX_TUNING adapter's tensor as a deep prompt of the layout its config names.

    With `prefix_projection` PEFT trains an MLP, but `save_pretrained` stores that MLP's output,
    the (N, W) keys and values, and `from_pretrained` runs them as they are: so do we."""
    layout = _config_layout(config, path)
    expected = (config.get("num_virtual_tokens"), layout.width)
    shape = (prompt.num_virtual_tokens, prompt.width)
    if expected[0] not in (None, shape[0]) or expected[1] != shape[1]:
        raise PromptFormatError(
            f"{path}: the tensor has shape {shape} but {CONFIG_FILE} says num_virtual_tokens="
            f"{expected[0]} and {layout} (layers x kv heads x head dim), {expected[1]} columns; "
            "the adapter is inconsistent, re-save it"
        )
    if prompt.layout is not None and prompt.layout != layout:
        raise PromptFormatError(
            f"{path}: the weights record the layout {prompt.layout} but {CONFIG_FILE} says {layout}; "
            "the adapter is inconsistent, re-export it"
        )
    return dataclasses.replace(prompt, kind="deep", layout=layout)


def _config_layout(config: dict, path: Path) -> KVLayout:
    """layers x kv heads x head dim from a PREFIX_TUNING config: PEFT writes the KV heads as
    num_attention_heads and their width (kv_heads x head_dim) as token_dim."""
    layers, heads, token_dim = (
        config.get(key) for key in ("num_layers", "num_attention_heads", "token_dim")
    )
    values = (layers, heads, token_dim)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise PromptFormatError(
            f"{path}: {CONFIG_FILE} of a PREFIX_TUNING adapter needs positive num_layers, "
            f"num_attention_heads and token_dim, got {ascii(layers)}, {ascii(heads)}, {ascii(token_dim)}; re-save it"
        )
    assert isinstance(layers, int) and isinstance(heads, int) and isinstance(token_dim, int)
    if token_dim % heads:
        raise PromptFormatError(
            f"{path}: {CONFIG_FILE} says token_dim={token_dim}, not a multiple of "
            f"num_attention_heads={heads}; the adapter is inconsistent, re-save it"
        )
    return KVLayout(layers, heads, token_dim // heads)


def write_peft_adapter(prompt: SoftPrompt, path: Path, *, force: bool = False) -> Path:
    """Export as a PEFT adapter directory that `PeftModel.from_pretrained` loads (files 0600):
    PROMPT_TUNING for a soft persona, PREFIX_TUNING for a deep one."""
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        refuse_existing(path / name, force)
    if path.exists() and not path.is_dir():
        raise PromptFormatError(
            f"{path} is a file; a PEFT adapter is a directory, choose another path"
        )
    config = adapter_config(prompt)
    metadata = {**prompt.metadata(), MARKER_KEY: FORMAT_NAME, "format": "pt"}
    weights = st_save({TENSOR_KEY: prompt.embeddings}, metadata=metadata)  # (N, D) or (N, W)
    created = not path.exists()
    with writing_to(path):
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_private_atomic(path / WEIGHTS_FILE, weights)
            write_private_atomic(path / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode())
        except OSError:
            if created:  # leave nothing half-written behind
                (path / WEIGHTS_FILE).unlink(missing_ok=True)
                (path / CONFIG_FILE).unlink(missing_ok=True)
                path.rmdir()
            raise
    return path


def adapter_config(prompt: SoftPrompt) -> dict[str, Any]:
    """The adapter_config.json PEFT's `save_pretrained` would write for `prompt`."""
    common = {
        "peft_type": PEFT_TYPES[prompt.kind],
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": prompt.num_virtual_tokens,  # N
        "num_transformer_submodules": 1,
        "base_model_name_or_path": prompt.base_model or None,
        "revision": None,
        "inference_mode": True,
        "modules_to_save": None,
        "auto_mapping": None,
    }
    layout = prompt.layout
    if layout is None:
        return {
            **common,
            "token_dim": prompt.width,  # D
            "num_attention_heads": None,  # PEFT fills these from the base model's config when loading
            "num_layers": None,
            "prompt_tuning_init": "RANDOM",
            "prompt_tuning_init_text": None,
            "tokenizer_name_or_path": None,
            "tokenizer_kwargs": None,
        }
    token_dim = layout.kv_heads * layout.head_dim  # PEFT's token_dim under grouped-query attention
    return {
        **common,
        "token_dim": token_dim,
        "num_attention_heads": layout.kv_heads,
        "num_layers": layout.layers,  # W = num_layers x 2 x token_dim
        "encoder_hidden_size": token_dim,
        "prefix_projection": False,  # the tensor is the keys and values themselves
        "init_weights": None,
    }


def _read_config(path: Path) -> dict:
    file = path / CONFIG_FILE
    try:
        config = json.loads(read_bounded(file, MAX_JSON_BYTES, "an adapter config"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise PromptFormatError(f"{file}: not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(config, dict):
        raise PromptFormatError(f"{file}: expected a JSON object")
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type not in KINDS_OF_PEFT_TYPES:
        raise PromptFormatError(
            f"{path}: a {ascii(peft_type) if peft_type else 'untyped'} PEFT adapter, not "
            "PROMPT_TUNING or PREFIX_TUNING; persona imports prompt-tuning (soft) and "
            "prefix-tuning (deep) adapters only"
        )
    task_type = str(config.get("task_type") or "CAUSAL_LM").upper()
    submodules = config.get("num_transformer_submodules")
    if task_type != "CAUSAL_LM" or submodules not in (None, 1):
        raise PromptFormatError(
            f"{path}: a {ascii(task_type)} adapter with {ascii(submodules)} transformer "
            "submodules; persona needs a CAUSAL_LM adapter with 1"
        )
    return {**config, "peft_type": peft_type}
