"""What a chat start prepares while torch is imported (tokenizer, int8 cache) is what the loader would have made itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from persona.model import warmup
from persona.model.chattokenizer import ChatTokenizer
from persona.model.files import WEIGHTS_FILE, int8_cache_path, read_entries
from persona.model.loader import load_chat_model, load_model

REPO = Path(__file__).resolve().parents[1]


def spy(monkeypatch):
    """What warmup handed the loader: the cache file's path for prepared tensors, "tokenizer"."""
    taken = []
    cache_tensors, tokenizer = warmup.cache_tensors, warmup.tokenizer

    def tensors(path):
        found = cache_tensors(path)
        if found is not None:
            taken.append(Path(path))
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
    with torch.no_grad():
        return loaded.model(input_ids=torch.tensor([[1, 5, 9, 23, 7, 2]]), use_cache=False).logits


def cache_of(directory):
    return int8_cache_path(directory / WEIGHTS_FILE)


def test_a_prepared_int8_cache_gives_the_same_model(tiny_model_dir, monkeypatch):
    plain = load_model(tiny_model_dir, precision="int8", native=True)  # writes the int8 cache
    assert cache_of(tiny_model_dir).is_file()
    taken = spy(monkeypatch)
    warmup.begin(str(tiny_model_dir), precision="int8", backend="torch")
    prepared = load_chat_model(tiny_model_dir, precision="int8")
    assert taken == [cache_of(tiny_model_dir), "tokenizer"]
    assert torch.equal(logits(prepared), logits(plain))
    assert prepared.fingerprint == plain.fingerprint
    assert isinstance(prepared.tokenizer, ChatTokenizer) and type(prepared.tokenizer) is type(
        plain.tokenizer
    )
    text = "Hello there, how are you?"
    assert prepared.tokenizer.encode(text) == plain.tokenizer.encode(text)
    assert warmup.held() is None  # the loader is done with it: nothing is kept


def test_a_cache_file_changed_after_it_was_read_is_read_again(tiny_model_dir, monkeypatch):
    plain = load_model(tiny_model_dir, precision="int8", native=True)
    cache = cache_of(tiny_model_dir)
    taken = spy(monkeypatch)
    warmup.begin(str(tiny_model_dir), precision="int8", backend="torch")
    assert warmup.held().tensors  # the thread has read the file
    stat = cache.stat()
    os.utime(cache, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # then it changes
    loaded = load_chat_model(tiny_model_dir, precision="int8")
    assert taken == ["tokenizer"]  # the tokenizer's files did not change
    assert torch.equal(logits(loaded), logits(plain))


def test_what_was_prepared_for_another_model_or_precision_is_dropped_unused(
    tiny_model_dir, tmp_path, monkeypatch
):
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    load_model(tiny_model_dir, precision="int8", native=True)
    taken = spy(monkeypatch)
    warmup.begin(str(tiny_model_dir), precision="int8", backend="torch")
    load_chat_model(other, precision="int8")  # another directory: its own cache and tokenizer
    assert taken == [] and warmup.held() is None
    warmup.begin(str(tiny_model_dir), precision="int8", backend="torch")
    fp32 = load_chat_model(
        tiny_model_dir, precision="fp32"
    )  # float32 reads the weights file, not the cache
    assert taken == ["tokenizer"] and warmup.held() is None
    assert torch.equal(
        logits(fp32), logits(load_model(tiny_model_dir, precision="fp32", native=True))
    )


@pytest.mark.parametrize("model", ["missing", "not-a-model"])
def test_nothing_is_prepared_for_a_directory_that_is_not_ready(tmp_path, model):
    (tmp_path / "not-a-model").mkdir()
    warmup.begin(
        str(tmp_path / model), precision="int8", backend="torch"
    )  # the loader reports the problem, not this
    assert warmup.held() is None


@pytest.mark.parametrize("int8", [True, False], ids=["no-int8-cache-yet", "fp32"])
def test_only_the_tokenizer_is_prepared_where_no_int8_cache_is_to_be_read(tiny_model_dir, int8):
    warmup.begin(str(tiny_model_dir), precision="int8" if int8 else "fp32", backend="torch")
    held = warmup.held()
    assert held.cache is None and not held.tensors and held.tokenizer
    assert isinstance(warmup.tokenizer(tiny_model_dir), ChatTokenizer)


def test_a_cut_cache_file_prepares_nothing_and_the_loader_mends_it(tiny_model_dir, monkeypatch):
    plain = load_model(tiny_model_dir, precision="int8", native=True)
    cache = cache_of(tiny_model_dir)
    with cache.open("r+b") as handle:
        handle.truncate(cache.stat().st_size - 100)
    taken = spy(monkeypatch)
    warmup.begin(str(tiny_model_dir), precision="int8", backend="torch")
    assert not warmup.held().tensors
    loaded = load_chat_model(tiny_model_dir, precision="int8")
    assert taken == ["tokenizer"]
    assert torch.equal(logits(loaded), logits(plain))


def test_preparing_never_imports_torch(tiny_model_dir):
    load_model(tiny_model_dir, precision="int8", native=True)
    code = (
        "import sys; from persona.model import warmup\n"
        f"warmup.begin({str(tiny_model_dir)!r}, precision='int8', backend='torch')\n"
        "held = warmup.held()\n"
        "assert held is not None and held.tensors and held.tokenizer, 'nothing was prepared'\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_short_reads_are_continued_where_they_stopped(tiny_model_dir, monkeypatch):
    load_model(tiny_model_dir, precision="int8", native=True)
    cache = cache_of(tiny_model_dir)
    real = os.preadv

    def at_most_777_bytes(fd, buffers, offset):  # a read may return less than asked
        budget, views = 777, []
        for buffer in buffers:
            if budget == 0:
                break
            views.append(memoryview(buffer)[:budget])
            budget -= len(views[-1])
        return real(fd, views, offset)

    monkeypatch.setattr(os, "preadv", at_most_777_bytes)
    warmup.begin(str(tiny_model_dir), precision="int8", backend="torch")
    prepared = warmup.cache_tensors(cache)
    assert prepared is not None
    with cache.open("rb") as handle:
        for (name, _, _, offset, size), (key, _, _, buffer) in zip(
            read_entries(handle), prepared, strict=True
        ):
            handle.seek(offset)
            assert key == name and bytes(buffer) == handle.read(size)
