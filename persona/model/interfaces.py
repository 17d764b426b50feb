"""What persona asks of a loaded model and its tokenizer, written down once.

A loaded model is one of several classes (persona's own Llama decoder, a transformers model, the
llama.cpp model, the vLLM gateway's embedding-only stand-in), and a tokenizer is persona's own
`ChatTokenizer` or one of transformers'. Callers speak only these protocols; the type checker
checks every class against them where it is stored (`LoadedModel`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class Tokenizer(Protocol):
    """The calls persona makes on a tokenizer (transformers' semantics)."""

    @property
    def eos_token_id(self) -> int | None: ...

    @property
    def all_special_tokens(self) -> list[str]: ...

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str: ...

    def get_vocab(self) -> dict[str, int]: ...

    # Any: transformers returns a str with tokenize=False (the only way persona calls it), and
    # token ids or a BatchEncoding otherwise; its stubs say so with a union persona never sees
    def apply_chat_template(
        self,
        conversation: list[dict[str, str]],
        *,
        tokenize: bool = True,
        add_generation_prompt: bool = False,
    ) -> Any: ...


class CausalLM(Protocol):
    """A frozen causal LM as persona's loaders hand it over. Only the config is common to all:
    the llama.cpp model has no input embedding module (its backend embeds through llama.cpp), so
    code that needs one takes a PyTorch model (the backends, training, fingerprinting)."""

    # Any: a transformers PretrainedConfig (or config.json as attributes): third-party, and read
    # only through getattr with defaults
    config: Any
    generation_config: Any  # transformers' GenerationConfig: eos_token_id is all persona reads
