"""PEFT both ways with the real `peft` package: its adapters import, ours load and give the same logits."""

from __future__ import annotations

import pytest
import torch

from persona.cli.main import main
from persona.formats import read_prompt, write_prompt
from persona.library import open_library
from persona.prompt.inject import prepend_prompt

peft = pytest.importorskip("peft")


def fresh_model(tiny_model_dir):
    """PeftModel wraps the base model in place: never hand it the shared session fixture."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def test_an_adapter_saved_by_peft_imports_with_the_identical_tensor(
    tiny_model_dir, tiny_prompt, tmp_path
):
    config = peft.PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=tiny_prompt.num_virtual_tokens
    )
    model = peft.get_peft_model(fresh_model(tiny_model_dir), config)
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.copy_(tiny_prompt.embeddings)  # (N, D)
    model.save_pretrained(tmp_path / "hamlet-adapter")

    prompt = read_prompt(tmp_path / "hamlet-adapter")
    assert torch.equal(prompt.embeddings, tiny_prompt.embeddings)
    assert prompt.name == "hamlet-adapter" and prompt.init == "imported"

    library = tmp_path / "library.db"
    assert (
        main(
            [
                "import",
                str(tmp_path / "hamlet-adapter"),
                "--name",
                "hamlet",
                "--library",
                str(library),
                "--model",
                str(tiny_model_dir),
            ]
        )
        == 0
    )
    lib = open_library(library)
    assert torch.equal(lib.get_prompt("hamlet").embeddings, tiny_prompt.embeddings)
    lib.close()


def test_an_adapter_we_export_loads_in_peft_and_gives_our_logits(
    tiny, tiny_model_dir, tiny_prompt, tmp_path
):
    path = write_prompt(tiny_prompt, tmp_path / "exported", "peft")
    model = peft.PeftModel.from_pretrained(fresh_model(tiny_model_dir), path).eval()
    assert torch.equal(model.prompt_encoder["default"].embedding.weight, tiny_prompt.embeddings)
    ids = tiny.tokenizer(
        ["Hello there, how are you today?", "To be, or not"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        theirs = model(
            input_ids=ids.input_ids, attention_mask=ids.attention_mask
        ).logits  # (B, N+T, V)
        embeds = tiny.model.get_input_embeddings()(ids.input_ids)  # (B, T, D)
        embeds, mask, _ = prepend_prompt(
            tiny_prompt.embeddings, embeds, ids.attention_mask
        )  # (B, N+T, D)
        ours = tiny.model(inputs_embeds=embeds, attention_mask=mask).logits  # (B, N+T, V)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
