"""Training checkpoints: one safetensors file, tensors as tensors and the rest as JSON in its header.

No pickle anywhere (no torch.save / torch.load): the prompt and AdamW's two moment tensors are
safetensors, the step counters, history and the identity of the run are a JSON string in the
header metadata. The file is written atomically, so an interrupted write never leaves a half
checkpoint behind.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from persona.errors import ConfigError, PromptFormatError
from persona.formats.files import writing_to
from persona.model.files import header_metadata, parse_header
from persona.paths import data_dir, write_private_atomic

FORMAT_NAME = "persona.train.checkpoint"
FORMAT_VERSION = "1"
RESUMABLE_DIFFERENCES = {
    "steps",
    "epochs",
    "eval_every",
    "micro_batch_size",
}  # a resumed run may change how long it runs, and how many rows go through the model at once


@dataclass
class Checkpoint:
    prompt: torch.Tensor  # (N, D)
    exp_avg: torch.Tensor  # (N, D) AdamW first moment
    exp_avg_sq: torch.Tensor  # (N, D) AdamW second moment
    adam_step: float
    step: int  # optimiser steps completed
    identity: dict[str, Any]  # what must match to resume: data, speaker, model, config
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    train_seconds: float = 0.0
    tokens: int = 0
    init: str = ""


def checkpoint_path(name: str) -> Path:
    """Where the checkpoint of persona `name` lives in the data dir."""
    slug = re.sub(r"[^\w.-]", "_", name)[:60]
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    folder = data_dir() / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder / f"{slug}-{digest}.safetensors"


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> Path:
    tensors = {
        "prompt": checkpoint.prompt.detach().contiguous(),  # (N, D)
        "exp_avg": checkpoint.exp_avg.detach().contiguous(),  # (N, D)
        "exp_avg_sq": checkpoint.exp_avg_sq.detach().contiguous(),  # (N, D)
    }
    state = {
        "adam_step": checkpoint.adam_step,
        "step": checkpoint.step,
        "identity": checkpoint.identity,
        "history": checkpoint.history,
        "seconds": checkpoint.seconds,
        "train_seconds": checkpoint.train_seconds,
        "tokens": checkpoint.tokens,
        "init": checkpoint.init,
    }
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "state": json.dumps(state, sort_keys=True),
    }
    with writing_to(path):  # a full disk or a read-only data dir: one line, not a traceback
        return write_private_atomic(path, st_save(tensors, metadata=metadata))


def load_checkpoint(path: Path) -> Checkpoint:
    if not path.is_file():
        raise ConfigError(
            f"there is no checkpoint to resume ({path} does not exist); run without --resume"
        )
    try:
        data = path.read_bytes()
        tensors = st_load(data)
        meta = header_metadata(parse_header(data)[0])
        if meta.get("format") != FORMAT_NAME:
            raise ValueError(f"format {meta.get('format')!r}")
        state = json.loads(meta["state"])
        return Checkpoint(
            prompt=tensors["prompt"],
            exp_avg=tensors["exp_avg"],
            exp_avg_sq=tensors["exp_avg_sq"],
            adam_step=float(state["adam_step"]),
            step=int(state["step"]),
            identity=dict(state["identity"]),
            history=list(state.get("history", [])),
            seconds=float(state.get("seconds", 0.0)),
            train_seconds=float(state.get("train_seconds", 0.0)),
            tokens=int(state.get("tokens", 0)),
            init=str(state.get("init", "")),
        )
    except (SafetensorError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PromptFormatError(
            f"the checkpoint {path} is unreadable ({exc}); delete it and train without --resume"
        ) from None


PRE_KIND_DEFAULTS = {"kind": "soft", "schedule": "constant"}


def check_resumable(checkpoint: Checkpoint, identity: dict[str, Any]) -> None:
    """Refuse to continue a checkpoint made from other data, speaker, model or settings."""
    saved = checkpoint.identity
    if "config" in saved:  # settings added since the checkpoint was made took these values then
        saved = {**saved, "config": {**PRE_KIND_DEFAULTS, **saved["config"]}}
    for key in sorted(set(saved) | set(identity)):
        if key == "config":
            for name in sorted(set(saved.get(key, {})) | set(identity.get(key, {}))):
                old, new = saved.get(key, {}).get(name), identity.get(key, {}).get(name)
                if name not in RESUMABLE_DIFFERENCES and old != new:
                    raise ConfigError(
                        f"the checkpoint was trained with {name}={old!r}, this run asks for {new!r}; "
                        "use the same settings to --resume, or train without --resume to start over"
                    )
        elif saved.get(key) != identity.get(key):
            raise ConfigError(
                f"the checkpoint was made with another {key} ({str(saved.get(key))[:40]!r}); "
                "train without --resume to start over"
            )
