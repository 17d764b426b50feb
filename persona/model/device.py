"""Which device the model runs on: `--device auto|cpu|cuda|mps` (chat, reply, serve, train, eval).

auto is CUDA where torch sees a GPU, else Apple's MPS where there is one, else the CPU. A device
that is asked for by name and is not there is a one-line error, not a traceback from deep inside
torch. torch is imported when a device is resolved, so the command line can offer the choices
without it.
"""

from __future__ import annotations

from typing import Any

import torch

from persona.errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(choice: str) -> torch.device:
    """The torch.device `choice` names; auto picks the fastest one this machine has."""
    if choice not in DEVICE_CHOICES:
        raise ConfigError(f"--device must be one of {', '.join(DEVICE_CHOICES)}, got {choice!r}")
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda: torch sees no CUDA GPU here (no GPU, no driver, or a CPU-only torch "
            "build); use --device cpu"
        )
    if choice == "mps" and not mps_available():
        raise ConfigError(
            "--device mps: Apple's MPS backend is not available here (it needs an Apple-silicon "
            "Mac and a torch built with MPS); use --device cpu"
        )
    return torch.device(choice)


def model_device(model: Any) -> torch.device:
    """The device the model's weights are on: where its inputs must go."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device
