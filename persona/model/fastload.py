"""Load a single-file safetensors checkpoint tensor by tensor into a model built without memory.

The model is built on the meta device (no allocation, no random init), then each tensor is read
from the file and put in place. With `int8=True` each decoder Linear is quantized as soon as its
weight is read, and the file is read tensor by tensor rather than memory-mapped (a mapping keeps
every page it has touched resident), so the float32 weights never all sit in memory at once: the
int8 chat path peaks near its final size instead of at the float32 model's. The float32 path maps
the file: its tensors are the mapping's pages, shared with every other process using the model.
Anything this loader cannot place (a sharded checkpoint, a buffer it cannot rebuild, a missing
tensor) returns None, and the caller falls back to `from_pretrained`.
"""

from __future__ import annotations

import contextlib
import os
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from persona.model.files import WEIGHTS_FILE, int8_cache_path, read_entries
from persona.paths import TEMP_SUFFIX, remove_stale

# Tensors read in advance (persona.model.warmup): (name, dtype, shape, buffer holding the bytes)
Prepared = list[tuple[str, str, list[int], Any]]
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
CACHE_SOURCE_KEY = (
    "persona_weights"  # int8 cache header metadata: the weights file it was made from
)


def load_streaming(
    directory: Path,
    config: Any,
    *,
    int8: bool,
    native: bool = False,
    prepared: Prepared | None = None,
) -> Any | None:
    """The causal LM of `directory` in float32 (decoder Linears int8 if asked), frozen, eval mode; or None.

    native: build persona's own inference decoder (persona.model.llama) where it supports the config,
    instead of transformers' model class. int8 weights are cached in the data dir (keyed by the
    weights file's path, size and mtime), so later starts read them instead of quantizing again.
    prepared: the int8 cache's tensors, already read (the caller vouches they are the cache's
    current contents); used instead of reading the cache file.
    """
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        return None
    if int8:
        _release_large_blocks()
        try:
            cache: Path | None = int8_cache_path(path)
        except OSError:  # a read-only data dir: quantize every time, but still chat
            cache = None
        if cache is not None and cache.is_file():
            model = _fill(_skeleton(config, native), cache, int8=True, prepared=prepared)
            if model is not None:
                return model
        model = _fill(_skeleton(config, native), path, int8=True)
        if model is not None and cache is not None:
            _save_cache(model, cache, path)
        return model
    return _fill(_skeleton(config, native), path, int8=False)


def _skeleton(config: Any, native: bool) -> Any | None:
    """The model on the meta device (no memory, no init), computed buffers rebuilt; None if they cannot be."""
    import torch

    if native:
        from persona.model import llama

        if llama.supports(config):
            return llama.LlamaDecoder(config, device="meta")
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(
                config, dtype=torch.float32, trust_remote_code=False
            )
    return model if _rebuild_meta_buffers(model, config) else None


def _fill(
    model: Any | None, path: Path, *, int8: bool, prepared: Prepared | None = None
) -> Any | None:
    """Put every tensor of `path` in place (quantizing decoder Linears if int8); None if one does not fit."""
    import torch

    if model is None:
        return None
    head, head_name = _head(model)
    int8_linear = None
    if int8:
        from persona.model import quantize

        int8_linear = quantize.Int8Linear
    pending: dict[str, dict[str, Any]] = {}  # cached int8 layers: name -> the tensors read so far
    try:
        with _tensors(path, mapped=not int8, prepared=prepared) as weights:
            for key, tensor in weights:
                module_name, _, attr = key.rpartition(".")
                module = model.get_submodule(module_name)
                if attr in ("weight_int8", "scale") or (module_name in pending and attr == "bias"):
                    if int8_linear is None or type(module) is not torch.nn.Linear:
                        return None
                    parts = pending.setdefault(module_name, {})
                    parts[attr] = tensor
                    bias = parts.get(
                        "bias", module.bias
                    )  # the bias may come before or after the weight
                    if (
                        "weight_int8" in parts
                        and "scale" in parts
                        and (bias is None or not bias.is_meta)
                    ):
                        bias = None if bias is None else bias.detach().to(torch.float32)
                        _replace(
                            model,
                            module_name,
                            int8_linear(parts["weight_int8"], parts["scale"], bias),
                        )
                        del pending[module_name]
                    continue
                if attr in module._parameters:
                    _set_param(module, attr, tensor.to(torch.float32))
                    if (
                        int8_linear is not None
                        and type(module) is torch.nn.Linear
                        and module_name != head_name
                    ):
                        if not any(p.is_meta for p in module.parameters()):
                            _replace(model, module_name, int8_linear.from_linear(module))
                elif attr in module._buffers:
                    module._buffers[attr] = tensor.clone()
                else:
                    return None
    except (AttributeError, KeyError, TypeError, ValueError, RuntimeError, OSError, struct.error):
        return None  # a tensor this architecture does not have, an unknown dtype, a short file, a garbled header
    if pending:
        return None
    if (
        getattr(model.config, "tie_word_embeddings", False)
        and head is not None
        and head.weight.is_meta
    ):
        head.weight = model.get_input_embeddings().weight
    if any(p.is_meta for p in model.parameters()) or any(b.is_meta for b in model.buffers()):
        return None
    model.eval()
    model.requires_grad_(False)
    return model


def _save_cache(model: Any, cache: Path, weights: Path) -> None:
    """Write the int8 model's tensors (the tied head left out); a failure only means no cache.

    The cache records which weights file it holds; once it is written, the caches it replaces
    (the same weights file before it changed, a file that is gone, an older format) are removed,
    so the cache folder holds one file per model rather than growing with every change.
    """
    from safetensors.torch import save_file

    head, head_name = _head(model)
    tied = head is not None and head.weight is model.get_input_embeddings().weight
    tensors = {
        key: value.contiguous()
        for key, value in model.state_dict().items()
        if not (tied and key == f"{head_name}.weight")
    }
    staging = cache.with_name(cache.name + TEMP_SUFFIX)
    source = str(weights.resolve())
    try:
        cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        remove_stale(
            cache.parent, "*.safetensors" + TEMP_SUFFIX
        )  # left by a start killed mid-write
        save_file(tensors, str(staging), metadata={CACHE_SOURCE_KEY: source})
        os.replace(staging, cache)
    except Exception:  # a full disk, a read-only data dir (safetensors raises its own error type)
        with contextlib.suppress(OSError):
            staging.unlink(missing_ok=True)
        return
    for other in cache.parent.glob("*.safetensors"):
        if other != cache:
            recorded = _cache_source(other)
            if recorded is None or recorded == source or not Path(recorded).exists():
                with contextlib.suppress(OSError):
                    other.unlink()  # a process still reading it keeps its open file


def _cache_source(cache: Path) -> str | None:
    """The weights file a cache was made from, as its header records it; None if it records none."""
    from safetensors import safe_open

    try:
        with safe_open(str(cache), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (
        Exception
    ):  # unreadable or not a safetensors file (safetensors raises its own error type)
        return None
    return metadata.get(CACHE_SOURCE_KEY)


def _head(model: Any) -> tuple[Any, str | None]:
    """The output projection and its module name (None where the model has none)."""
    head = model.get_output_embeddings()
    return head, next((name for name, module in model.named_modules() if module is head), None)


DTYPES = {
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F64": "float64",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


@contextlib.contextmanager
def _tensors(
    path: Path, *, mapped: bool, prepared: Prepared | None = None
) -> Iterator[Iterator[tuple[str, Any]]]:
    """(name, tensor) for every tensor of a safetensors file: views of a mapping, views of the
    buffers `prepared` holds (its tensors read in advance), or read one at a time."""
    if mapped:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as weights:
            yield ((key, weights.get_tensor(key)) for key in weights.keys())  # noqa: SIM118 (not a mapping)
        return
    if prepared is not None:
        yield (_from_buffer(key, dtype, shape, buffer) for key, dtype, shape, buffer in prepared)
        return
    with path.open("rb") as handle:
        yield _read_tensors(handle)


def _read_tensors(handle: Any) -> Iterator[tuple[str, Any]]:
    import torch

    for key, dtype, shape, offset, size in list(read_entries(handle)):
        handle.seek(offset)
        data = torch.empty(
            size, dtype=torch.uint8
        )  # read straight into the tensor: one copy, GIL released
        if handle.readinto(data.numpy().data) != size:
            raise ValueError(f"{key} is cut short")
        yield key, data.view(getattr(torch, DTYPES[dtype])).reshape(shape)


def _from_buffer(key: str, dtype: str, shape: list[int], buffer: Any) -> tuple[str, Any]:
    """A tensor over `buffer` (no copy; it keeps the buffer alive), from warmup's reading of the file."""
    import torch

    data = (
        torch.frombuffer(buffer, dtype=torch.uint8)
        if len(buffer)
        else torch.empty(0, dtype=torch.uint8)
    )
    return key, data.view(getattr(torch, DTYPES[dtype])).reshape(shape)


def _release_large_blocks() -> None:
    """Have glibc give blocks of 1 MB and more back to the system when freed (not keep them in its heap).

    Quantizing while reading frees a float32 weight per layer; by default glibc raises its mmap
    threshold after such frees and keeps the memory, and the process ends up holding ~150 MB it no
    longer uses. A no-op where the C library is not glibc.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "mallopt"):
            libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)
    except OSError:
        pass


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
        if any(buffer.is_meta for buffer in fresh.buffers()) or any(
            True for _ in fresh.parameters()
        ):
            return False
        _replace(model, name, fresh)
    return True
