"""What a chat start prepares while torch is imported is what the loader would have read itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from persona.model import chattokenizer, fastload, warmup
from persona.model.loader import load_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def nothing_prepared():
    warmup.forget()
    yield
    warmup.forget()


def spy(monkeypatch):
    """Record what warmup hands the loader: 'tensors' and 'tokenizer' each time one is taken."""
    taken = []
    cache_tensors, tokenizer = warmup.cache_tensors, warmup.tokenizer

    def tensors(path):
        found = cache_tensors(path)
        if found is not None:
            taken.append("tensors")
        return found

    def prepared_tokenizer(directory):
        found = tokenizer(directory)
        if found is not None:
            taken.append("tokenizer")
        return found

    monkeypatch.setattr(warmup, "cache_tensors", tensors)
    monkeypatch.setattr(warmup, "tokenizer", prepared_tokenizer)
    return taken


def logits(loaded):
    ids = [1, 5, 9, 23, 7, 2]
    with torch.no_grad():
        return loaded.model(input_ids=torch.tensor([ids]), use_cache=False).logits


def test_a_prepared_int8_cache_and_tokenizer_give_the_same_model(tiny_model_dir, monkeypatch):
    plain = load_model(tiny_model_dir, precision="int8", native=True)  # writes the int8 cache
    cache = fastload.int8_cache_path(tiny_model_dir / fastload.WEIGHTS_FILE)
    assert cache.is_file()
    taken = spy(monkeypatch)
    warmup.begin(str(tiny_model_dir), int8=True)
    prepared = load_model(tiny_model_dir, precision="int8", native=True)
    assert taken == ["tensors", "tokenizer"]
    assert torch.equal(logits(prepared), logits(plain))
    assert isinstance(prepared.tokenizer, chattokenizer.ChatTokenizer)
    assert prepared.tokenizer.encode("hello there") == plain.tokenizer.encode("hello there")
    assert prepared.fingerprint == plain.fingerprint


def test_a_cache_file_changed_after_it_was_read_is_read_again(tiny_model_dir, monkeypatch):
    plain = load_model(tiny_model_dir, precision="int8", native=True)
    cache = fastload.int8_cache_path(tiny_model_dir / fastload.WEIGHTS_FILE)
    taken = spy(monkeypatch)
    warmup.begin(str(tiny_model_dir), int8=True)
    warmup._finished()  # the thread has read the file
    stat = cache.stat()
    os.utime(cache, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # then it changes
    loaded = load_model(tiny_model_dir, precision="int8", native=True)
    assert "tensors" not in taken
    assert torch.equal(logits(loaded), logits(plain))


def test_a_different_model_or_precision_ignores_what_was_prepared(tiny_model_dir, tmp_path, monkeypatch):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    load_model(tiny_model_dir, precision="int8", native=True)
    taken = spy(monkeypatch)
    warmup.begin(str(tiny_model_dir), int8=True)
    load_model(other, precision="int8", native=True)  # another directory: its own cache, its own tokenizer
    fp32 = load_model(tiny_model_dir, precision="fp32", native=True)  # float32 reads the weights file, not the cache
    assert taken == ["tokenizer"]  # the directory's tokenizer is the same whatever the precision
    assert torch.equal(logits(fp32), logits(load_model(tiny_model_dir, precision="fp32", native=True)))


@pytest.mark.parametrize("model", ["missing", "not-a-model"])
def test_nothing_is_prepared_for_a_directory_that_is_not_ready(tmp_path, model):
    (tmp_path / "not-a-model").mkdir()
    warmup.begin(str(tmp_path / model), int8=True)  # the loader reports the problem, not this
    assert warmup._prepared is None


def test_preparing_never_imports_torch(tiny_model_dir):
    load_model(tiny_model_dir, precision="int8", native=True)
    code = (
        "import sys; from persona.model import warmup; from pathlib import Path\n"
        f"warmup.begin({str(tiny_model_dir)!r}, int8=True)\n"
        f"assert warmup.tokenizer(Path({str(tiny_model_dir)!r})) is not None\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
