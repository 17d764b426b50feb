"""A Llama-family model with a sentencepiece tokenizer loads from a local directory and chats."""

from __future__ import annotations

import pytest
import torch

from persona.engine.chat import ChatEngine
from persona.engine.config import GenerationConfig
from persona.model.loader import load_model
from persona.prompt.softprompt import SoftPrompt
from tests.conftest import CORPUS

spm = pytest.importorskip("sentencepiece")

LLAMA2_STYLE_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}<<SYS>>{{ message['content'] }}<</SYS>>\n"
    "{% elif message['role'] == 'user' %}[INST] {{ message['content'] }} [/INST]"
    "{% else %} {{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)


@pytest.fixture(scope="module")
def sentencepiece_model_dir(tmp_path_factory):
    import json

    from transformers import LlamaConfig, LlamaForCausalLM

    directory = tmp_path_factory.mktemp("spm-llama")
    corpus = directory / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 20))
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(directory / "tokenizer"),
        vocab_size=120,
        model_type="bpe",
        bos_id=1,
        eos_id=2,
        unk_id=0,
        pad_id=-1,
        minloglevel=2,
    )
    # the layout of a sentencepiece Llama checkpoint: tokenizer.model, no tokenizer.json
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "chat_template": LLAMA2_STYLE_TEMPLATE,
            }
        )
    )
    config = LlamaConfig(
        vocab_size=120,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.3,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


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
