"""The int8 chat path: decoder Linear layers quantized, embedding/fingerprint and output head untouched."""

from __future__ import annotations

import pytest
import torch

from persona.engine.chat import ChatEngine
from persona.engine.config import GenerationConfig
from persona.errors import ConfigError
from persona.model.loader import load_model


def test_int8_keeps_the_fingerprint_and_the_head_and_still_chats(tiny_model_dir, tiny, tiny_prompt):
    quantized = load_model(tiny_model_dir, precision="int8")
    assert quantized.precision == "int8"
    assert quantized.fingerprint == tiny.fingerprint  # soft prompts trained on fp32 still fit
    from torch.ao.nn.quantized.dynamic import Linear as Int8Linear

    linears = [m for m in quantized.model.model.modules() if isinstance(m, torch.nn.Linear | Int8Linear)]
    assert linears and all(isinstance(m, Int8Linear) for m in linears)
    assert isinstance(quantized.model.lm_head, torch.nn.Linear)
    engine = ChatEngine(quantized)
    engine.reply([{"role": "user", "content": "Hello there!"}], tiny_prompt,
                 GenerationConfig(temperature=0, repetition_penalty=1.0, max_new_tokens=6))
    assert engine.last.new_tokens + (engine.last.finish_reason == "stop") >= 1


def test_int8_logits_stay_close_to_fp32(tiny_model_dir, tiny):
    quantized = load_model(tiny_model_dir, precision="int8")
    ids = tiny.tokenizer("To be, or not to be, that is the question.", return_tensors="pt").input_ids
    with torch.no_grad():
        reference = torch.log_softmax(tiny.model(ids).logits, dim=-1)  # (1, T, V)
        approx = torch.log_softmax(quantized.model(ids).logits, dim=-1)  # (1, T, V)
    drift = (reference.exp() * (reference - approx)).sum(-1).mean()  # mean KL(fp32 || int8)
    assert float(drift) < 0.05


def test_unknown_precision_names_the_choices(tiny_model_dir):
    with pytest.raises(ConfigError, match="fp32"):
        load_model(tiny_model_dir, precision="int4")
