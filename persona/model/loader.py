"""Load the frozen base model: the embedded default (SmolLM2-135M-Instruct) or any local HF directory.

Where the model is (and the one-time conversion of the default) is persona.model.location's;
this module builds the model and its tokenizer from that directory.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from persona.errors import ModelError, first_line
from persona.model import warmup
from persona.model.fastload import load_streaming
from persona.model.files import WEIGHTS_FILE, int8_cache_path
from persona.model.fingerprint import (
    Fingerprint,
    remembered,
    remembered_fingerprint,
    weights_key,
)
from persona.model.interfaces import CausalLM, Tokenizer
from persona.model.location import (  # noqa: F401 - callers find where the model is here too
    COMPLETE_MARKER,
    DEFAULT_MODEL_ID,
    converted_default_dir,
    default_gguf_path,
    default_model_dir,
    ready_model_dir,
    resolve_model_path,
)

# What `--precision auto` means for chat. int8 is the default only if it moves the starter personas'
# held-out NLL by less than 1% against fp32 (benchmarks/quantize.py measures both).
CHAT_PRECISION_AUTO = "int8"


@dataclass
class LoadedModel:
    model: CausalLM  # eval mode, every parameter frozen
    tokenizer: Tokenizer
    fingerprint: Fingerprint
    model_id: str  # human-readable: the default's name or the directory given
    precision: str = "fp32"  # fp32 | int8 (chat only) | bf16 (weights on a CUDA or MPS device)

    @property
    def context_length(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)


def load_model(
    path: str | os.PathLike[str] | None = None,
    *,
    precision: str = "fp32",
    native: bool = False,
    device: Any = "cpu",
) -> LoadedModel:
    """Load a frozen causal LM and its tokenizer; never runs code from the model directory.

    precision: "fp32"; "int8" quantizes the Linear layers for faster chat on CPU; "auto" is what
    chat uses by default (see CHAT_PRECISION_AUTO).
    native: for inference only (chat, reply): run the model on persona's own Llama decoder
    (persona.model.llama) where it supports the checkpoint, which starts faster than transformers'
    model class; anything else still loads through transformers. Training needs native=False.
    device: where the model runs (a torch.device or its name, already known to exist): float32 on
    the CPU, bfloat16 weights on a CUDA or MPS device that supports them (float32 otherwise). The
    fingerprint is taken from the float32 weights first, so it is the same wherever the model runs.
    """
    import torch

    from persona.model.quantize import (
        check_precision,
        int8_supported,
        prepack_all,
        quantize_int8,
        require_int8,
    )

    check_precision(precision)
    device = torch.device(device)
    if device.type != "cpu" and (native or precision != "fp32"):
        raise ModelError(
            f"persona's own decoder and int8 run on the CPU; device {str(device)!r} takes "
            "the transformers model in fp32"
        )
    directory, model_id = resolve_model_path(path)
    if precision == "auto":  # int8 where this torch build has the kernel (x86), else float32
        precision = CHAT_PRECISION_AUTO if int8_supported() else "fp32"
    if precision == "int8":
        require_int8()
    weights = directory / WEIGHTS_FILE
    key = weights_key(weights) if weights.is_file() else None  # before reading: see weights_key
    model = _load_native(directory, model_id, int8=precision == "int8") if native else None
    model_is_native = model is not None
    if model is None:
        model = _load_transformers(directory, model_id, int8=precision == "int8")
    model.eval()
    model.requires_grad_(False)
    fingerprint = remembered_fingerprint(
        model, key
    )  # the float32 input embedding, whatever the precision
    tokenizer = _load_tokenizer(directory, model_id, for_chat=model_is_native)
    if precision == "int8":
        # what streaming did not already quantize (all of it after from_pretrained), the head
        # with the channels the int8 decoder's activations carry outliers in
        quantize_int8(model, _head_outliers(model, tokenizer, key))
        if hasattr(
            model, "fuse_int8_projections"
        ):  # persona's own decoder: fewer, larger int8 calls
            model.fuse_int8_projections()
        # packed from now on, after the float32 embedding is gone (a lower peak), on a thread of its own:
        # the first prompt (which uses the unpacked weights) does not wait for it
        prepack_all(model)
    if device.type != "cpu":
        dtype = _weights_dtype(device)
        model.to(device=device, dtype=dtype)
        precision = "bf16" if dtype == torch.bfloat16 else precision
    if model_is_native:
        model.prepare_for_decode()  # plans the single-token step over the weights as loaded
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        fingerprint=fingerprint,
        model_id=model_id,
        precision=precision,
    )


T = TypeVar("T")
HEAD_OUTLIERS_STORE = "head-outliers.json"  # in the models dir: weights file -> channel indices


def _head_outliers(model: Any, tokenizer: Any, key: str | None) -> Any:
    """The output projection's outlier channels (quantize.head_outlier_channels) for the weights
    file `key` names: found once (a forward pass over a short text, about 0.2 s) and remembered."""
    import torch

    from persona.model.quantize import CALIBRATION_TEXT, HEAD_OUTLIERS, head_outlier_channels

    width = int(model.get_input_embeddings().weight.shape[1])

    def find() -> list[int]:
        ids = list(tokenizer.encode(CALIBRATION_TEXT))
        return [int(i) for i in head_outlier_channels(model, ids)]

    def valid(value: Any) -> bool:
        return (
            isinstance(value, list)
            and len(value) == min(HEAD_OUTLIERS, width)
            and all(type(i) is int and 0 <= i < width for i in value)
            and len(set(value)) == len(value)
        )

    return torch.tensor(remembered(HEAD_OUTLIERS_STORE, key, find, valid), dtype=torch.long)


def _weights_dtype(device: Any) -> Any:
    """bfloat16 where the accelerator computes in it, else float32."""
    import torch

    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "mps":
        try:
            torch.ones(1, dtype=torch.bfloat16, device=device)
        except (RuntimeError, TypeError):  # older macOS: no bfloat16 on the GPU
            return torch.float32
        return torch.bfloat16
    return torch.float32


BACKENDS = ("torch", "llama")


def load_chat_model(
    path: str | os.PathLike[str] | None = None,
    *,
    precision: str = "auto",
    backend: str = "torch",
    gguf: str | os.PathLike[str] | None = None,
    device: str = "cpu",
) -> LoadedModel:
    """The model as chat runs it: persona's PyTorch path (int8 by default), or llama.cpp on a GGUF
    file. device: cpu, cuda, mps or auto (a GPU where torch sees one); off the CPU, transformers'
    model in bfloat16 (persona's own decoder and int8 are CPU paths). Loaded on a thread that has
    ended when this returns (see on_passing_thread)."""
    return on_passing_thread(
        _load_chat_model, path, precision=precision, backend=backend, gguf=gguf, device=device
    )


def on_passing_thread(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """function(*args, **kwargs) on a new thread, waited for: its result, or its exception raised here.

    Why: heavy torch work done before generation starts (loading, quantizing) must not leave a
    live thread holding torch's OpenMP pool beside the generating thread's (persona.engine.cores
    says why and measures it); a thread that ends takes its pool with it.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = function(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - raised again on the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="persona-load", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    result: T = outcome["value"]
    return result


def _load_chat_model(
    path: str | os.PathLike[str] | None,
    *,
    precision: str,
    backend: str,
    gguf: str | os.PathLike[str] | None,
    device: str,
) -> LoadedModel:
    try:
        if device != "cpu":
            from persona.model.device import resolve_device

            place = resolve_device(device)
            if place.type != "cpu":
                if backend != "torch" or precision == "int8":
                    raise ModelError(
                        f"{'int8' if precision == 'int8' else '--backend ' + backend} runs on the "
                        f"CPU; on {place.type} persona runs bfloat16 weights (drop that flag, or "
                        "pass --device cpu)"
                    )
                return load_model(path, precision="fp32", native=False, device=place)
        if backend == "llama":
            return load_llamacpp(path, gguf=gguf)
        if backend != "torch":
            raise ModelError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
        if gguf is not None:
            raise ModelError(
                "--gguf is for --backend llama; the torch backend reads the Hugging Face directory"
            )
        return load_model(path, precision=precision, native=True)
    finally:
        warmup.forget()  # what a start read in advance and the loader did not take is not kept


def load_llamacpp(
    path: str | os.PathLike[str] | None = None, *, gguf: str | os.PathLike[str] | None = None
) -> LoadedModel:
    """llama.cpp running a GGUF file, with the tokenizer and fingerprint of its Hugging Face copy.

    The GGUF file: `gguf`, else the embedded default's own file, else the one *.gguf in the model
    directory. The fingerprint is the Hugging Face copy's, so prompts trained on it are accepted.
    """
    from persona.model import llama, llamacpp

    if not llamacpp.available():
        raise ModelError(f"the llama backend needs llama-cpp-python; {llamacpp.INSTALL_HINT}")
    directory, model_id = resolve_model_path(path)
    if gguf is not None:
        gguf_path = Path(gguf).expanduser()
        if not gguf_path.is_file():
            raise ModelError(
                f"GGUF file {str(gguf_path)!r} does not exist; pass the .gguf file of this model"
            )
    elif path is None and not os.environ.get("PERSONA_MODEL"):
        gguf_path = default_gguf_path()
    else:
        found = sorted(directory.glob("*.gguf"))
        if len(found) != 1:
            raise ModelError(
                f"the llama backend needs the model's GGUF file: pass --gguf FILE ({len(found)} .gguf files in {str(directory)!r})"
            )
        gguf_path = found[0]
    config = llama.read_config(directory)
    if config is None:
        raise ModelError(
            f"the llama backend runs Llama-family models; {model_id!r} is not one (use --backend torch)"
        )
    fingerprint = _checkpoint_fingerprint(directory, config, model_id)
    model = llamacpp.LlamaCppModel(
        gguf_path, config, context=int(min(config.max_position_embeddings, 4096))
    )
    model.generation_config = llama.read_generation_settings(directory, config)
    tokenizer = _load_tokenizer(directory, model_id, for_chat=True)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        fingerprint=fingerprint,
        model_id=model_id,
        precision="gguf",
    )


def _checkpoint_fingerprint(directory: Path, config: Any, model_id: str) -> Fingerprint:
    """The fingerprint from the checkpoint's embedding tensor alone (no model built)."""
    from safetensors import safe_open

    from persona.model.fingerprint import fingerprint_of

    try:
        with safe_open(str(directory / WEIGHTS_FILE), framework="pt") as weights:
            embedding = weights.get_tensor("model.embed_tokens.weight")
    except Exception as exc:
        raise ModelError(
            f"cannot read the input embedding of {model_id!r}: {first_line(exc)}"
        ) from None
    return fingerprint_of(str(config.architectures[0]), embedding)


def _load_native(directory: Path, model_id: str, *, int8: bool) -> Any | None:
    """persona's own decoder, read without transformers' config classes (their import costs seconds); or None."""
    from persona.model import llama

    settings = llama.read_config(directory)
    if settings is None:
        return None  # not a Llama checkpoint this decoder computes exactly
    try:
        model = load_streaming(
            directory, settings, int8=int8, native=True, prepared=_prepared_cache(directory, int8)
        )
    except Exception as exc:
        raise ModelError(f"cannot load the model in {model_id!r}: {first_line(exc)}") from None
    if model is not None:
        model.generation_config = llama.read_generation_settings(directory, settings)
    return model


def _prepared_cache(directory: Path, int8: bool) -> list[tuple[str, str, list[int], Any]] | None:
    """The int8 cache's tensors if this start read them in advance (see warmup), else None."""
    if not int8:
        return None
    try:
        cache = int8_cache_path(directory / WEIGHTS_FILE)
    except OSError:  # no weights file, or a data dir that cannot be made
        return None
    return warmup.cache_tensors(cache)


def _load_tokenizer(directory: Path, model_id: str, *, for_chat: bool) -> Any:
    """The model's tokenizer. for_chat: persona's ChatTokenizer where it applies (loads in a fraction
    of AutoTokenizer's time), else AutoTokenizer handed the generic config rather than the model's
    own config class, whose import pulls in torch.distributed and sympy (seconds at every start)."""
    if for_chat:
        from persona.model import chattokenizer

        light = warmup.tokenizer(directory) or chattokenizer.load(directory)
        if light is not None:
            return light
    from transformers import AutoTokenizer, PretrainedConfig

    _quiet_transformers()
    try:
        extra = {"config": PretrainedConfig.from_pretrained(directory)} if for_chat else {}
        return AutoTokenizer.from_pretrained(directory, trust_remote_code=False, **extra)
    except Exception as exc:
        raise ModelError(f"cannot load the tokenizer in {model_id!r}: {first_line(exc)}") from None


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _load_transformers(directory: Path, model_id: str, *, int8: bool) -> Any:
    import torch
    from transformers import AutoConfig

    _quiet_transformers()

    try:
        config = AutoConfig.from_pretrained(directory, trust_remote_code=False)
    except Exception as exc:
        raise ModelError(
            f"cannot read the model config in {model_id!r}: {first_line(exc)}"
        ) from None
    try:
        # None: not a case it handles
        model = load_streaming(
            directory, config, int8=int8, prepared=_prepared_cache(directory, int8)
        )
        if model is not None:
            _attach_generation_config(model, directory)
            return model
        from transformers import AutoModelForCausalLM

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoModelForCausalLM.from_pretrained(
                directory,
                config=config,
                dtype=torch.float32,
                trust_remote_code=False,
                use_safetensors=True,  # never unpickle .bin weights
            )
    except ValueError as exc:
        raise ModelError(
            f"{model_id!r} is not a causal language model persona can load ({type(config).__name__}): {first_line(exc)}"
        ) from None
    except Exception as exc:
        raise ModelError(f"cannot load the model in {model_id!r}: {first_line(exc)}") from None


def _attach_generation_config(model: Any, directory: Path) -> None:
    """What from_pretrained reads besides the weights: generation_config.json (end-of-turn ids)."""
    from transformers import GenerationConfig

    try:
        model.generation_config = GenerationConfig.from_pretrained(directory)
    except (OSError, ValueError):
        model.generation_config = GenerationConfig.from_model_config(model.config)
