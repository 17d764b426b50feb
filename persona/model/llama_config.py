"""What persona's Llama decoder reads of a checkpoint: config.json (with LlamaConfig's defaults
filled in) and the end-of-sequence ids of generation_config.json, without transformers' config
classes (importing them costs about two seconds); and which configs the decoder computes exactly
as transformers does (`supports`)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ARCHITECTURE = "LlamaForCausalLM"


def supports(config: Any) -> bool:
    """True when `config` describes a model this decoder computes exactly as transformers does."""
    architectures = getattr(config, "architectures", None) or [ARCHITECTURE]
    if getattr(config, "model_type", None) != "llama" or list(architectures) != [ARCHITECTURE]:
        return False
    if (
        getattr(config, "hidden_act", None) != "silu"
        or int(getattr(config, "pretraining_tp", 1) or 1) != 1
    ):
        return False
    return rope_theta(config) is not None


# LlamaConfig's defaults for what a config.json may leave out
DEFAULTS: dict[str, Any] = {
    "architectures": [ARCHITECTURE],
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
    "pretraining_tp": 1,
    "num_key_value_heads": None,
    "head_dim": None,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "rope_parameters": None,
    "eos_token_id": None,
    "bos_token_id": None,
    "pad_token_id": None,
}
REQUIRED = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
)


def read_config(directory: Path) -> Any | None:
    """config.json as attributes (LlamaConfig's defaults filled in) when this decoder supports it, else None.

    Read without transformers' config classes: importing them costs about two seconds.
    """
    try:
        data = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or any(not isinstance(data.get(key), int) for key in REQUIRED):
        return None
    config = SimpleNamespace(**{**DEFAULTS, **data})
    return config if supports(config) else None


def read_generation_settings(directory: Path, config: Any) -> Any:
    """What chat needs of generation_config.json: the end-of-sequence ids (else config.json's)."""
    try:
        data = json.loads((Path(directory) / "generation_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    eos = data.get("eos_token_id") if isinstance(data, dict) else None
    return SimpleNamespace(
        eos_token_id=eos if eos is not None else getattr(config, "eos_token_id", None)
    )


def rope_theta(config: Any) -> float | None:
    """The RoPE base for the default (unscaled) rotary embedding; None for any other RoPE type."""
    parameters = getattr(config, "rope_parameters", None)
    if isinstance(parameters, dict):
        if parameters.get("rope_type", "default") != "default" or "rope_theta" not in parameters:
            return None
        return float(parameters["rope_theta"])
    if getattr(config, "rope_scaling", None):
        return None
    theta = getattr(config, "rope_theta", None)
    return None if theta is None else float(theta)
