"""The streaming loader builds the same model from_pretrained does, and falls back where it cannot."""

from __future__ import annotations

import shutil

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from persona.model import quantize
from persona.model.fastload import load_streaming


def reference(directory):
    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


def test_streaming_load_gives_the_same_logits_as_from_pretrained(tiny_model_dir):
    config = AutoConfig.from_pretrained(tiny_model_dir)
    model = load_streaming(tiny_model_dir, config, int8=False)
    assert model is not None and not any(p.requires_grad for p in model.parameters())
    ids = torch.tensor([[1, 5, 9, 23, 7, 2]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(tiny_model_dir)(ids).logits)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied as the config says


def test_streaming_int8_quantizes_as_it_reads(tiny_model_dir):
    config = AutoConfig.from_pretrained(tiny_model_dir)
    streamed = load_streaming(tiny_model_dir, config, int8=True)
    linears = [m for m in streamed.model.modules() if isinstance(m, torch.nn.Linear | quantize.Int8Linear)]
    assert linears and all(isinstance(m, quantize.Int8Linear) for m in linears)
    after = quantize.quantize_int8(reference(tiny_model_dir))  # the same layers, quantized after loading
    quantize.quantize_int8(streamed)
    ids = torch.tensor([[1, 5, 9, 23, 7, 2]])
    with torch.no_grad():
        assert torch.equal(streamed(ids).logits, after(ids).logits)


def test_a_checkpoint_it_cannot_place_falls_back(tiny_model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    (copy / "model.safetensors").rename(copy / "model-00001-of-00001.safetensors")  # as a sharded save names it
    assert load_streaming(copy, AutoConfig.from_pretrained(copy), int8=False) is None
