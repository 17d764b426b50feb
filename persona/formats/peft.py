"""PEFT prompt-tuning adapters: a directory with adapter_config.json and adapter_model.safetensors.

PEFT keeps the (N, D) tensor under the key `prompt_embeddings`, the same key as our own file, and
prepends it exactly as persona does, so an adapter is a persona and back. Our metadata rides along
in the safetensors header (PEFT ignores it), which makes the round trip exact.
"""

from __future__ import annotations

import json
from pathlib import Path

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
from persona.prompt.fileformat import FORMAT_NAME, TENSOR_KEY
from persona.prompt.softprompt import SoftPrompt

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLED_WEIGHTS_FILE = "adapter_model.bin"
MARKER_KEY = "persona_format"  # our marker; PEFT's own "format" key must stay "pt"


def is_peft_adapter(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG_FILE).is_file()


def read_peft_adapter(path: Path) -> SoftPrompt:
    """Import a PEFT PROMPT_TUNING adapter directory saved by `save_pretrained` (safetensors only)."""
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
    expected = (config.get("num_virtual_tokens"), config.get("token_dim"))
    shape = (prompt.num_virtual_tokens, prompt.hidden_size)
    if any(want is not None and want != have for want, have in zip(expected, shape, strict=True)):
        raise PromptFormatError(
            f"{path}: the tensor has shape {shape} but {CONFIG_FILE} says num_virtual_tokens={expected[0]}, "
            f"token_dim={expected[1]}; the adapter is inconsistent, re-save it"
        )
    if not ours:
        prompt.name = path.resolve().name
        prompt.init = "imported"
        prompt.description = ""
    if config.get("base_model_name_or_path") and not prompt.base_model:
        prompt.base_model = str(config["base_model_name_or_path"])
    return prompt


def write_peft_adapter(prompt: SoftPrompt, path: Path, *, force: bool = False) -> Path:
    """Export as a PEFT adapter directory that `PeftModel.from_pretrained` loads (files 0600)."""
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        refuse_existing(path / name, force)
    if path.exists() and not path.is_dir():
        raise PromptFormatError(
            f"{path} is a file; a PEFT adapter is a directory, choose another path"
        )
    config = {
        "peft_type": "PROMPT_TUNING",
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": prompt.num_virtual_tokens,  # N
        "token_dim": prompt.hidden_size,  # D
        "num_transformer_submodules": 1,
        "num_attention_heads": None,  # PEFT fills these from the base model's config when loading
        "num_layers": None,
        "base_model_name_or_path": prompt.base_model or None,
        "revision": None,
        "inference_mode": True,
        "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": None,
        "tokenizer_name_or_path": None,
        "tokenizer_kwargs": None,
        "modules_to_save": None,
        "auto_mapping": None,
    }
    metadata = {**prompt.metadata(), MARKER_KEY: FORMAT_NAME, "format": "pt"}
    weights = st_save({TENSOR_KEY: prompt.embeddings}, metadata=metadata)  # (N, D) float32
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


def _read_config(path: Path) -> dict:
    file = path / CONFIG_FILE
    try:
        config = json.loads(read_bounded(file, MAX_JSON_BYTES, "an adapter config"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise PromptFormatError(f"{file}: not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(config, dict):
        raise PromptFormatError(f"{file}: expected a JSON object")
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "PROMPT_TUNING":
        raise PromptFormatError(
            f"{path}: a {ascii(peft_type) if peft_type else 'untyped'} PEFT adapter, not "
            "PROMPT_TUNING; persona imports prompt-tuning adapters only"
        )
    task_type = str(config.get("task_type") or "CAUSAL_LM").upper()
    submodules = config.get("num_transformer_submodules")
    if task_type != "CAUSAL_LM" or submodules not in (None, 1):
        raise PromptFormatError(
            f"{path}: a {ascii(task_type)} adapter with {ascii(submodules)} transformer "
            "submodules; persona needs a CAUSAL_LM adapter with 1"
        )
    return config
