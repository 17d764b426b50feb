"""A Llama-family model with a sentencepiece tokenizer loads from a local directory and chats."""

from __future__ import annotations

import torch

from persona.engine.chat import ChatEngine
from persona.engine.config import GenerationConfig
from persona.model.loader import load_model
from persona.prompt.softprompt import SoftPrompt


def test_sentencepiece_llama_loads_and_replies_with_a_persona(sentencepiece_model_dir):
    loaded = load_model(sentencepiece_model_dir)
    assert len(loaded.tokenizer) == 120
    assert loaded.tokenizer.convert_ids_to_tokens(loaded.tokenizer("Hello there").input_ids)[
        0
    ].startswith("▁")
    prompt = SoftPrompt(
        torch.randn(4, 16, generator=torch.Generator().manual_seed(0)),
        name="spm",
        fingerprint=loaded.fingerprint,
    )
    engine = ChatEngine(loaded)
    text = engine.prompt_text([{"role": "user", "content": "Hello there"}], prompt)
    assert text.startswith("<s><<SYS>><</SYS>>") and "[INST] Hello there [/INST]" in text
    engine.reply(
        [{"role": "user", "content": "Hello there"}],
        prompt,
        GenerationConfig(temperature=0, repetition_penalty=1.0, max_new_tokens=8),
    )
    ids = engine.renderer.render([{"role": "user", "content": "Hello there"}], prompt)
    assert ids.count(loaded.tokenizer.bos_token_id) == 1  # the template's BOS, not a second one
    assert engine.last.new_tokens + (engine.last.finish_reason == "stop") >= 1
