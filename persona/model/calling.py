"""How a transformers causal LM takes its KV cache: the one calling-convention fact that varies."""

from __future__ import annotations

import inspect
from typing import Any


def cache_argument_name(model: Any) -> str:
    """transformers renamed `past_key_values` to `cache`; whichever this version's forward takes."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
