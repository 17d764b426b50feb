"""The llama.cpp backend: the GGUF file itself runs the decoder, fed soft prompts as embeddings.

llama.cpp has no soft prompts, but its batch API takes input embeddings in place of token ids
(`llama_batch_init(n, n_embd, 1)`, fill `embd`, `llama_decode`). So the virtual tokens go in as
one embeddings batch, the rendered turn as token ids after them, and the KV cache in llama.cpp's
memory is reused across turns and cropped with `llama_memory_seq_rm`.

`LlamaCppModel` speaks the small part of transformers' forward signature that the chat engine
uses, so `ChatEngine` runs on it unchanged: `model(input_ids=... | inputs_embeds=..., cache=...,
logits_to_keep=1).logits`. It holds one llama.cpp sequence: a cache that is not the sequence's
current owner reports length 0, and the engine encodes that conversation again (a persona switch
costs a prefill here, not on the PyTorch path). The tokenizer, chat template and fingerprint come
from the Hugging Face copy of the same model, which is also where the soft prompt's embedding
space was learned: the GGUF's token embeddings are the same numbers.

Optional: needs `llama-cpp-python` (`pip install 'persona[llama]'`, which compiles llama.cpp).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from persona.errors import ConfigError, ModelError

INSTALL_HINT = "install it with `pip install 'persona[llama]'` (compiles llama.cpp, several minutes), or use --backend torch"


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def _bindings() -> Any:
    try:
        import llama_cpp.llama_cpp as bindings
    except ImportError:
        raise ConfigError(f"the llama backend needs llama-cpp-python; {INSTALL_HINT}") from None
    return bindings


_SILENCE: Any = None  # the log callback must outlive every call into llama.cpp


def _silence_logs(bindings: Any) -> None:
    global _SILENCE
    if _SILENCE is None:
        _SILENCE = bindings.llama_log_callback(lambda level, text, data: None)
        bindings.llama_log_set(_SILENCE, ctypes.c_void_p(0))


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _place(batch: Any, count: int, start: int) -> None:
    """Positions start..start+count of sequence 0, logits for the last one only."""
    batch.n_tokens = count
    for index in range(count):
        batch.pos[index] = start + index
        batch.n_seq_id[index] = 1
        batch.seq_id[index][0] = 0
        batch.logits[index] = 0
    batch.logits[count - 1] = 1


class LlamaCppCache:
    """A conversation's place in the model's one llama.cpp sequence (see the module docstring)."""

    def __init__(self, model: LlamaCppModel) -> None:
        self._model = model
        self._length = 0

    def get_seq_length(self) -> int:
        return self._length if self._model._owner is self else 0

    def crop(self, max_length: int) -> None:
        if max_length < 0:
            max_length = self.get_seq_length() + max_length
        if self._model._owner is self and max_length < self._length:
            self._model._remove_from(max(0, max_length))
            self._length = max(0, max_length)


@dataclass
class _Output:
    logits: torch.Tensor  # (1, 1, V)


class LlamaCppModel:
    """A GGUF model in llama.cpp, for chat: one sequence, float32 logits of the last position."""

    def __init__(
        self, gguf: Path, config: Any, *, context: int = 4096, threads: int | None = None
    ) -> None:
        bindings = _bindings()
        _silence_logs(bindings)
        bindings.llama_backend_init()
        self._b = bindings
        self.config = config
        self.generation_config: Any = None
        self.gguf = Path(gguf)
        params = bindings.llama_model_default_params()
        params.n_gpu_layers = 0
        self._model = bindings.llama_model_load_from_file(str(self.gguf).encode(), params)
        if not self._model:
            raise ModelError(
                f"llama.cpp could not load {str(self.gguf)!r}; is it a GGUF model file?"
            )
        threads = threads or default_threads()
        ctx_params = bindings.llama_context_default_params()
        ctx_params.n_ctx = context
        ctx_params.n_batch = context
        ctx_params.n_ubatch = min(512, context)
        ctx_params.n_seq_max = 1
        ctx_params.n_threads = threads
        ctx_params.n_threads_batch = threads
        self._ctx = bindings.llama_init_from_model(self._model, ctx_params)
        if not self._ctx:
            self.close()  # frees the model once (and forgets it, so __del__ does not free it again)
            raise ModelError(f"llama.cpp could not create a context for {str(self.gguf)!r}")
        self.hidden_size = int(bindings.llama_model_n_embd(self._model))
        self.vocab_size = int(
            bindings.llama_vocab_n_tokens(bindings.llama_model_get_vocab(self._model))
        )
        if self.hidden_size != int(config.hidden_size) or self.vocab_size != int(config.vocab_size):
            self.close()
            raise ModelError(
                f"{str(self.gguf)!r} (width {self.hidden_size}, vocabulary {self.vocab_size}) is not the model of "
                f"its tokenizer and fingerprint (width {config.hidden_size}, vocabulary {config.vocab_size})"
            )
        self._memory = bindings.llama_get_memory(self._ctx)
        self._owner: LlamaCppCache | None = None
        self._capacity = context  # positions one batch holds
        self._token_batch = bindings.llama_batch_init(context, 0, 1)
        self._embed_batch = bindings.llama_batch_init(context, self.hidden_size, 1)
        self._batches = True

    # ---- the forward signature the chat engine uses ------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> _Output:
        return self.forward(*args, **kwargs)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: LlamaCppCache | None = None,
        logits_to_keep: int = 1,
        **_: Any,
    ) -> _Output:
        if cache is None:
            raise ConfigError("the llama backend always decodes through a cache")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        rows = input_ids if input_ids is not None else inputs_embeds
        assert rows is not None  # exactly one of the two, checked above
        if rows.shape[0] != 1:
            raise ConfigError(
                "the llama backend decodes one conversation at a time; use --backend torch for batches"
            )
        if (
            self._owner is not cache
        ):  # another conversation held the sequence: start this one afresh
            self._remove_from(0)
            self._owner, cache._length = cache, 0
        start, count = cache._length, rows.shape[1]
        if not 0 < count <= self._capacity:
            raise ConfigError(
                f"{count} positions do not fit one llama.cpp batch of {self._capacity}; send fewer at a time"
            )
        if input_ids is not None:
            batch = self._token_batch
            for index, token in enumerate(input_ids[0].tolist()):
                batch.token[index] = token
        else:
            batch = self._embed_batch
            assert inputs_embeds is not None
            embeddings = inputs_embeds[0].detach().to(torch.float32).contiguous()  # (N, D)
            if embeddings.shape[1] != self.hidden_size:
                raise ConfigError(
                    f"embeddings of width {embeddings.shape[1]} do not fit this model (width {self.hidden_size})"
                )
            ctypes.memmove(batch.embd, embeddings.data_ptr(), embeddings.numel() * 4)
        _place(batch, count, start)
        code = self._b.llama_decode(self._ctx, batch)
        if code != 0:
            self._remove_from(start)
            raise ModelError(
                f"llama.cpp could not decode {count} positions after {start} (code {code}); the conversation may exceed its context"
            )
        cache._length = start + count
        pointer = self._b.llama_get_logits_ith(self._ctx, count - 1)  # float[V], owned by llama.cpp
        logits = torch.from_numpy(
            np.ctypeslib.as_array(pointer, shape=(self.vocab_size,)).copy()
        )  # one copy
        return _Output(logits=logits.view(1, 1, self.vocab_size))

    def _remove_from(self, position: int) -> None:
        self._b.llama_memory_seq_rm(self._memory, 0, position, -1)

    def new_cache(self) -> LlamaCppCache:
        return LlamaCppCache(self)

    def close(self) -> None:
        if getattr(self, "_batches", False):
            self._b.llama_batch_free(self._token_batch)
            self._b.llama_batch_free(self._embed_batch)
            self._batches = False
        if getattr(self, "_ctx", None):
            self._b.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            self._b.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
