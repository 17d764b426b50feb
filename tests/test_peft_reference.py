"""Our injection is PEFT's PROMPT_TUNING: same logits, and a PEFT-saved adapter speaks the same."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from persona.engine.chat import ChatEngine
from persona.engine.config import GenerationConfig
from persona.prompt.inject import IGNORE_INDEX, prepend_prompt
from persona.prompt.softprompt import SoftPrompt

peft = pytest.importorskip("peft")

GREEDY = GenerationConfig(temperature=0, repetition_penalty=1.0, max_new_tokens=12)


@pytest.fixture
def peft_model(tiny_model_dir, tiny_prompt):
    """A fresh copy of the tiny model wrapped by PEFT with our prompt tensor as its prompt."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    config = peft.PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=tiny_prompt.num_virtual_tokens
    )
    model = peft.get_peft_model(base, config)
    model.prompt_encoder["default"].embedding.weight.data.copy_(tiny_prompt.embeddings)
    model.eval()
    return model


def test_logits_equal_peft_forward(tiny, tiny_prompt, peft_model):
    ids = tiny.tokenizer(
        ["Hello there, how are you today?", "To be, or not"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        theirs = peft_model(
            input_ids=ids.input_ids, attention_mask=ids.attention_mask
        ).logits  # (B, N+T, V)
        embeds = tiny.model.get_input_embeddings()(ids.input_ids)  # (B, T, D)
        embeds, mask, _ = prepend_prompt(tiny_prompt.embeddings, embeds, ids.attention_mask)
        ours = tiny.model(inputs_embeds=embeds, attention_mask=mask).logits  # (B, N+T, V)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_labels_are_padded_like_peft(tiny, tiny_prompt, peft_model):
    ids = tiny.tokenizer("I am not only witty in myself", return_tensors="pt").input_ids  # (1, T)
    labels = ids.clone()
    labels[:, :3] = IGNORE_INDEX
    with torch.no_grad():
        theirs = peft_model(input_ids=ids, labels=labels).loss
        embeds, _, padded = prepend_prompt(
            tiny_prompt.embeddings, tiny.model.get_input_embeddings()(ids), labels=labels
        )
        ours = tiny.model(inputs_embeds=embeds, labels=padded).loss
    assert padded.shape[1] == ids.shape[1] + tiny_prompt.num_virtual_tokens
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_peft_saved_adapter_gives_the_same_greedy_tokens(tiny, tiny_prompt, peft_model, tmp_path):
    peft_model.save_pretrained(tmp_path / "adapter")
    tensor = load_file(tmp_path / "adapter" / "adapter_model.safetensors")[
        "prompt_embeddings"
    ]  # (N, D)
    prompt = SoftPrompt(tensor, name="from-peft", fingerprint=tiny.fingerprint)
    assert torch.equal(prompt.embeddings, tiny_prompt.embeddings)

    engine = ChatEngine(tiny)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    engine.reply(messages, prompt, GREEDY)
    ours = engine.last.token_ids

    ids = torch.tensor([engine.renderer.render(messages, prompt)])  # (1, T)
    with torch.no_grad():
        out = peft_model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=GREEDY.max_new_tokens,
            do_sample=False,
            use_cache=False,  # PEFT's cached generate is wrong for prompt tuning with these versions
            eos_token_id=sorted(engine.stop_ids),
            pad_token_id=tiny.tokenizer.pad_token_id,
        )
    theirs = [t for t in out[0, ids.shape[1] :].tolist() if t not in engine.stop_ids]
    assert len(ours) >= 3, "the check is only meaningful if the model says something"
    assert ours == theirs
