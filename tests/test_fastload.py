"""The streaming loader builds the same model from_pretrained does, and falls back where it cannot."""

from __future__ import annotations

import os
import shutil
import time

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from persona.model import quantize
from persona.model.fastload import load_streaming
from persona.model.loader import load_model
from persona.paths import STALE_AFTER_S


def reference(directory):
    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


def test_streaming_load_gives_the_same_logits_as_from_pretrained(tiny_model_dir):
    config = AutoConfig.from_pretrained(tiny_model_dir)
    model = load_streaming(tiny_model_dir, config, int8=False)
    assert model is not None and not any(p.requires_grad for p in model.parameters())
    ids = torch.tensor([[1, 5, 9, 23, 7, 2]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(tiny_model_dir)(ids).logits)
    assert (
        model.get_output_embeddings().weight is model.get_input_embeddings().weight
    )  # tied as the config says


def test_streaming_int8_quantizes_as_it_reads(tiny_model_dir):
    config = AutoConfig.from_pretrained(tiny_model_dir)
    streamed = load_streaming(tiny_model_dir, config, int8=True)
    linears = [
        m for m in streamed.model.modules() if isinstance(m, torch.nn.Linear | quantize.Int8Linear)
    ]
    assert linears and all(isinstance(m, quantize.Int8Linear) for m in linears)
    after = quantize.quantize_int8(
        reference(tiny_model_dir)
    )  # the same layers, quantized after loading
    quantize.quantize_int8(streamed)
    ids = torch.tensor([[1, 5, 9, 23, 7, 2]])
    with torch.no_grad():
        assert torch.equal(streamed(ids).logits, after(ids).logits)


def test_a_checkpoint_it_cannot_place_falls_back(tiny_model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    (copy / "model.safetensors").rename(
        copy / "model-00001-of-00001.safetensors"
    )  # as a sharded save names it
    assert load_streaming(copy, AutoConfig.from_pretrained(copy), int8=False) is None


def test_int8_weights_are_cached_and_the_cache_gives_the_same_model(tiny_model_dir):
    config = AutoConfig.from_pretrained(tiny_model_dir)
    cache = load_fastload_cache_path(tiny_model_dir)
    assert not cache.exists()
    first = load_streaming(tiny_model_dir, config, int8=True)
    assert cache.is_file()
    before = cache.stat().st_mtime_ns
    second = load_streaming(tiny_model_dir, config, int8=True)  # read from the cache
    assert cache.stat().st_mtime_ns == before
    ids = torch.tensor([[1, 5, 9, 23, 7, 2]])
    with torch.no_grad():
        assert torch.equal(first(ids).logits, second(ids).logits)


def garbled_header(data: bytes) -> bytes:
    """The same file with its first tensor's shape turned to null: valid JSON, not a valid header."""
    import json
    import struct

    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    header[next(key for key in header if key != "__metadata__")]["shape"] = None
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= length
    return (
        data[:8] + text.ljust(length) + data[8 + length :]
    )  # the same length: only the shape is wrong


@pytest.mark.parametrize(
    "damage",
    [lambda data: data[:1000], lambda data: data[:3], garbled_header],
    ids=["cut-in-the-data", "shorter-than-its-header-length", "garbled-header"],
)
def test_a_corrupt_cache_is_ignored_and_rewritten(tiny_model_dir, damage):
    config = AutoConfig.from_pretrained(tiny_model_dir)
    load_streaming(tiny_model_dir, config, int8=True)
    cache = load_fastload_cache_path(tiny_model_dir)
    cache.write_bytes(
        damage(cache.read_bytes())
    )  # cut short, as a full disk or a kill leaves it, or garbled
    model = load_streaming(tiny_model_dir, config, int8=True)
    assert model is not None and cache.stat().st_size > 1000
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        reference_logits = quantize.quantize_int8(reference(tiny_model_dir))(ids).logits
        assert torch.equal(quantize.quantize_int8(model)(ids).logits, reference_logits)


def test_int8_loads_without_a_cache_where_the_data_dir_cannot_hold_one(tiny_model_dir, monkeypatch):
    import persona.paths

    def unusable():
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(persona.paths, "models_dir", unusable)
    model = load_streaming(tiny_model_dir, AutoConfig.from_pretrained(tiny_model_dir), int8=True)
    assert model is not None and isinstance(model.model.layers[0].mlp.up_proj, quantize.Int8Linear)


def test_new_weights_get_a_new_cache(tiny_model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    old = load_fastload_cache_path(copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # same bytes, new mtime: treated as new weights
    assert load_fastload_cache_path(copy) != old


def load_fastload_cache_path(directory):
    from persona.model.files import WEIGHTS_FILE, int8_cache_path

    return int8_cache_path(directory / WEIGHTS_FILE)


def test_linear_biases_survive_quantizing_and_the_cache(tmp_path):
    """Architectures with biased projections (attention_bias) load the same from the file and the cache."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attention_bias=True,
        initializer_range=0.3,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.bias.normal_(0.0, 1.0)  # visible if lost
    model.save_pretrained(tmp_path)
    ids = torch.tensor([[1, 5, 9, 23, 7, 2]])
    loaded_config = AutoConfig.from_pretrained(tmp_path)
    first = quantize.quantize_int8(load_streaming(tmp_path, loaded_config, int8=True))
    second = quantize.quantize_int8(
        load_streaming(tmp_path, loaded_config, int8=True)
    )  # from the cache
    after = quantize.quantize_int8(reference(tmp_path))
    assert first.model.layers[0].self_attn.q_proj.bias is not None
    with torch.no_grad():
        assert torch.equal(first(ids).logits, after(ids).logits)
        assert torch.equal(second(ids).logits, after(ids).logits)


def test_a_new_cache_replaces_the_stale_ones_and_keeps_other_models(tiny_model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    config = AutoConfig.from_pretrained(copy)
    load_streaming(tiny_model_dir, config, int8=True)  # another model's cache: must stay
    other_model = load_fastload_cache_path(tiny_model_dir)
    load_streaming(copy, config, int8=True)
    stale = load_fastload_cache_path(copy)
    legacy = stale.with_name(
        "0" * 24 + ".safetensors"
    )  # a cache from before caches recorded their source
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(legacy))
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # the weights change (new mtime): a new cache
    load_streaming(copy, config, int8=True)
    fresh = load_fastload_cache_path(copy)
    assert fresh != stale and fresh.is_file()
    assert not stale.exists() and not legacy.exists()
    assert other_model.is_file()
    assert sorted(fresh.parent.glob("*.safetensors")) == sorted([fresh, other_model])


def test_a_stale_staging_file_of_a_killed_start_is_removed_when_a_cache_is_written(
    tiny_model_dir,
):
    cache = load_fastload_cache_path(tiny_model_dir)
    cache.parent.mkdir(parents=True, exist_ok=True)
    stale = cache.parent / "0123456789abcdef01234567.safetensors.tmp"  # a start killed mid-write
    stale.write_bytes(b"\0" * 1000)
    then = time.time() - STALE_AFTER_S - 60
    os.utime(stale, (then, then))
    load_model(tiny_model_dir, precision="int8", native=True)  # writes the cache
    assert cache.is_file() and not stale.exists()
