"""Load a single-file safetensors checkpoint tensor by tensor into a model built without memory.

The model is built on the meta device (no allocation, no random init), then each tensor is read
from the file and put in place. With `int8=True` each decoder Linear is quantized as soon as its
weight is read, so the float32 weights never all sit in memory at once: the int8 chat path peaks
near its final size instead of at the float32 model's. Anything this loader cannot place (a
sharded checkpoint, a buffer it cannot rebuild, a missing tensor) returns None, and the caller
falls back to `from_pretrained`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

WEIGHTS_FILE = "model.safetensors"


def load_streaming(directory: Path, config: Any, *, int8: bool) -> Any | None:
    """The causal LM of `directory` in float32 (decoder Linears int8 if asked), frozen, eval mode; or None."""
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    path = directory / WEIGHTS_FILE
    if not path.is_file():
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=False)
    if not _rebuild_meta_buffers(model, config):
        return None
    head = model.get_output_embeddings()
    head_name = next((name for name, module in model.named_modules() if module is head), None)
    int8_linear = None
    if int8:
        from persona.model.quantize import _int8_linear_class

        int8_linear = _int8_linear_class()
    with safe_open(str(path), framework="pt") as weights:
        for key in weights.keys():  # noqa: SIM118 (safe_open is not a mapping)
            module_name, _, attr = key.rpartition(".")
            try:
                module = model.get_submodule(module_name)
            except AttributeError:
                return None  # a tensor this architecture does not have
            tensor = weights.get_tensor(key).to(torch.float32)
            if attr in module._parameters:
                if int8_linear is not None and type(module) is torch.nn.Linear and module_name != head_name:
                    _set_param(module, attr, tensor)
                    if not any(p.is_meta for p in module.parameters()):
                        _replace(model, module_name, int8_linear.from_linear(module))
                    continue
                _set_param(module, attr, tensor)
            elif attr in module._buffers:
                module._buffers[attr] = tensor
            else:
                return None
    if getattr(config, "tie_word_embeddings", False) and head is not None and head.weight.is_meta:
        head.weight = model.get_input_embeddings().weight
    if any(p.is_meta for p in model.parameters()) or any(b.is_meta for b in model.buffers()):
        return None
    model.eval()
    model.requires_grad_(False)
    return model


def _set_param(module: Any, name: str, tensor: Any) -> None:
    import torch

    module._parameters[name] = torch.nn.Parameter(tensor, requires_grad=False)


def _replace(model: Any, name: str, replacement: Any) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, replacement)


def _rebuild_meta_buffers(model: Any, config: Any) -> bool:
    """Computed buffers (rotary frequencies) are not in the checkpoint: rebuild their module on CPU."""
    for name, module in list(model.named_modules()):
        if not any(buffer.is_meta for buffer in module.buffers(recurse=False)):
            continue
        try:
            fresh = type(module)(config=getattr(module, "config", config))
        except Exception:
            return False
        if any(buffer.is_meta for buffer in fresh.buffers()) or any(True for _ in fresh.parameters()):
            return False
        _replace(model, name, fresh)
    return True
