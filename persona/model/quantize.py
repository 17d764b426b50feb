"""int8 weights for chat on CPU: dynamic quantization of the frozen model's Linear layers.

Weights are stored as int8 with per-tensor scales and activations are quantized on the fly, which
roughly halves decode time on a laptop CPU. The input embedding (and so the fingerprint and every
soft prompt) stays float32. Training always uses the float32 model.
"""

from __future__ import annotations

import warnings
from typing import Any

from persona.errors import ConfigError

PRECISIONS = ("auto", "fp32", "int8")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    return precision


def quantize_int8(model: Any) -> Any:
    """Replace the decoder's nn.Linear layers by dynamically quantized int8 ones (per-channel), in place.

    The output projection stays float32: it shares its weight with the input embedding in many
    small models, and per-tensor int8 logits visibly degrade the text.
    """
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    if "fbgemm" not in torch.backends.quantized.supported_engines and "x86" not in torch.backends.quantized.supported_engines:
        raise ConfigError("int8 is not supported by this torch build on this CPU; use --precision fp32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch marks the eager quantization API as deprecated
        decoder = getattr(model, getattr(model, "base_model_prefix", "model"), model)
        quantize_dynamic(decoder, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    return model
