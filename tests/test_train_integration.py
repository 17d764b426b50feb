"""Training on the real default model (SmolLM2-135M-Instruct): our loss is PEFT's, and the committed
Falstaff prompt fits the model and speaks more like Falstaff than the bare model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from persona.dialogue import Example, encode_examples
from persona.prompt.deep import KVLayout
from persona.prompt.inject import IGNORE_INDEX
from persona.prompt.render import Renderer
from persona.prompt.softprompt import SoftPrompt
from persona.train.batching import collate, pad_token_id
from persona.train.evaluate import mean_nll
from persona.train.loss import labelled_nll

pytestmark = pytest.mark.integration

FALSTAFF_FILE = Path(__file__).parent.parent / "personas" / "falstaff.safetensors"

# Falstaff in The Merry Wives of Windsor (public domain): lines the committed prompt never trained on.
MERRY_WIVES = [
    ("MISTRESS QUICKLY: Give your worship good morrow.", "Good morrow, good wife."),
    ("FORD: Bless you, sir!", "Now, sir, what's your will?"),
    (
        "BARDOLPH: Sir John, there's one Master Brook below would fain speak with you.",
        "Brook is his name? Call him in. Such Brooks are welcome to me, that o'erflow such liquor.",
    ),
    (
        "PISTOL: Why, then the world's mine oyster, Which I with sword will open.",
        "Not a penny. I have been content, sir, you should lay my countenance to pawn.",
    ),
    (
        "MISTRESS QUICKLY: She's as fartuous a civil modest wife, and one, I tell you, that will not miss you morning nor evening prayer.",
        "Well, commend me to them both: there's my purse; I am yet thy debtor. Boy, go along with this woman.",
    ),
]


@pytest.fixture(scope="module")
def default_model(default_model_store):
    from persona.model.loader import load_model

    return load_model(default_model_store / "SmolLM2-135M-Instruct")


def test_loss_and_gradient_match_peft_on_the_default_model(default_model) -> None:
    from peft import PromptTuningConfig, get_peft_model

    renderer = Renderer(default_model.tokenizer)
    examples = [Example([{"role": "user", "content": c}], r, 0) for c, r in MERRY_WIVES[:3]]
    ids, mask, labels = collate(
        encode_examples(renderer, examples, "falstaff"), pad_token_id(default_model.tokenizer)
    )  # (B, T)
    prompt = torch.nn.Parameter(
        default_model.model.get_input_embeddings().weight[100:108].detach().clone()
    )  # (8, D)
    total, count = labelled_nll(default_model.model, prompt, ids, mask, labels)
    (total / count).backward()

    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(default_model.model_id, dtype=torch.float32)
    peft_model = get_peft_model(
        base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=8)
    )
    embedding = peft_model.prompt_encoder["default"].embedding.weight  # (8, D)
    with torch.no_grad():
        embedding.copy_(prompt.detach())
    reference = peft_model(input_ids=ids, attention_mask=mask, labels=labels).loss
    reference.backward()
    assert count == int((labels != IGNORE_INDEX).sum())
    assert (total / count).item() == pytest.approx(reference.item(), abs=1e-4)
    torch.testing.assert_close(prompt.grad, embedding.grad, atol=1e-5, rtol=1e-3)


def test_committed_falstaff_prompt_fits_the_default_model_and_beats_no_prompt(
    default_model,
) -> None:
    falstaff = SoftPrompt.load(FALSTAFF_FILE)
    falstaff.check_fits(default_model.fingerprint, KVLayout.of_config(default_model.model.config))
    renderer = Renderer(default_model.tokenizer)
    pad_id = pad_token_id(default_model.tokenizer)
    examples = [Example([{"role": "user", "content": c}], r, 0) for c, r in MERRY_WIVES]
    bare, _ = mean_nll(
        default_model.model, None, encode_examples(renderer, examples, None), pad_id=pad_id
    )
    soft, _ = mean_nll(
        default_model.model,
        falstaff.embeddings,
        encode_examples(renderer, examples, "falstaff", system=falstaff.system or None),
        pad_id=pad_id,
        layout=falstaff.layout,  # a deep prompt: keys and values at every layer
    )
    assert soft < bare
