"""What a deep prompt must match, readable without torch: the persona kinds and a model's KV layout.

A deep prompt (persona.prompt.deep) holds keys and values for every layer of one model's cache:
`layers x kv_heads x head_dim` says which, and W = layers x 2 x kv_heads x head_dim is its width.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from persona.errors import PromptFormatError

KINDS = ("soft", "deep")
_LAYOUT_TEXT = re.compile(r"^(\d{1,4})x(\d{1,4})x(\d{1,5})$")


@dataclass(frozen=True)
class KVLayout:
    """The shape of a model's KV cache that a deep prompt must match: layers x kv_heads x head_dim."""

    layers: int
    kv_heads: int
    head_dim: int

    @property
    def width(self) -> int:
        """W: the columns of a deep prompt for this layout."""
        return self.layers * 2 * self.kv_heads * self.head_dim

    def __str__(self) -> str:
        return f"{self.layers}x{self.kv_heads}x{self.head_dim}"

    @classmethod
    def parse(cls, text: str) -> KVLayout:
        """The layout written as `layers x kv_heads x head_dim` (our files' metadata)."""
        match = _LAYOUT_TEXT.match(text or "")
        if match is None or 0 in (layout := tuple(int(g) for g in match.groups())):
            raise PromptFormatError(
                f"unreadable deep-prompt layout {text[:40]!r}; expected LAYERSxKV_HEADSxHEAD_DIM such as 30x3x64"
            )
        return cls(*layout)

    @classmethod
    def of_config(cls, config: Any) -> KVLayout | None:
        """The layout of a transformers config's KV cache; None where it names no plain one."""
        text = getattr(config, "text_config", None) or config
        layers = getattr(text, "num_hidden_layers", None)
        heads = getattr(text, "num_attention_heads", None)
        hidden = getattr(text, "hidden_size", None)
        kv_heads = getattr(text, "num_key_value_heads", None) or heads
        head_dim = getattr(text, "head_dim", None)
        if not head_dim and isinstance(hidden, int) and isinstance(heads, int) and heads > 0:
            head_dim = hidden // heads
        values = (layers, kv_heads, head_dim)
        if not all(_positive_int(v) for v in values):
            return None
        return cls(*values)  # type: ignore[arg-type]


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
