"""Loading models: a local HF directory works; bad paths and non-chat models are one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from persona.errors import ModelError
from persona.model.loader import load_model
from persona.prompt.render import Renderer


def test_tiny_directory_loads_frozen_with_fingerprint(tiny):
    assert not any(p.requires_grad for p in tiny.model.parameters())
    assert tiny.fingerprint.hidden_size == 32 and tiny.fingerprint.vocab_size == len(tiny.tokenizer)
    assert len(tiny.fingerprint.embedding_sha256) == 16


def test_fingerprint_changes_when_the_embeddings_change(tiny_model_dir, tiny, tmp_path):
    import torch

    copy = tmp_path / "changed"
    shutil.copytree(tiny_model_dir, copy)
    loaded = load_model(copy)
    with torch.no_grad():
        loaded.model.get_input_embeddings().weight[0, 0] += 1.0
    from persona.model.fingerprint import compute_fingerprint

    assert compute_fingerprint(loaded.model) != tiny.fingerprint


def test_the_embedding_hash_is_remembered_per_weights_file_and_taken_again_when_it_changes(
    tiny_model_dir, tmp_path, monkeypatch
):
    import os

    import torch
    from safetensors.torch import load_file, save_file

    from persona.model import fingerprint as fingerprints

    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    first = load_model(copy, native=True).fingerprint
    hashed = []
    real = fingerprints.fingerprint_of
    monkeypatch.setattr(fingerprints, "fingerprint_of", lambda *a: hashed.append(1) or real(*a))
    assert load_model(copy, native=True).fingerprint == first  # remembered: not hashed again
    assert load_model(copy, precision="int8", native=True).fingerprint == first
    assert hashed == []

    weights = copy / "model.safetensors"  # new embedding, same size: the modification time tells
    tensors = load_file(str(weights))
    tensors["model.embed_tokens.weight"] = tensors["model.embed_tokens.weight"] + 1.0
    save_file(tensors, str(weights), metadata={"format": "pt"})
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    changed = load_model(copy, native=True)
    assert hashed == [1]
    assert changed.fingerprint != first
    assert changed.fingerprint == fingerprints.compute_fingerprint(changed.model)
    with torch.no_grad():
        assert torch.equal(
            changed.model.get_input_embeddings().weight, tensors["model.embed_tokens.weight"]
        )


def test_an_unreadable_hash_store_only_means_hashing_again(tiny_model_dir, tiny):
    from persona.model.fingerprint import DIGEST_CACHE, weights_key
    from persona.paths import models_dir

    store = models_dir() / DIGEST_CACHE
    key = weights_key(tiny_model_dir / "model.safetensors")
    bad_digests = [
        json.dumps({key: digest}) for digest in ("z" * 16, "0" * 15, 12345)
    ]  # under this file's own key
    for garbage in ("{not json", "[1, 2]", '{"x": 5}', *bad_digests):
        store.write_text(garbage, encoding="utf-8")
        assert load_model(tiny_model_dir, native=True).fingerprint == tiny.fingerprint
    store.unlink()
    store.mkdir()  # a directory where the file should be: nothing can be read or written
    assert load_model(tiny_model_dir, native=True).fingerprint == tiny.fingerprint


def test_a_bad_head_outlier_entry_only_means_finding_them_again(tiny_model_dir):
    """The int8 head's outlier channels are remembered per weights file; an entry that does not
    read as channels of this model is found again (and the store rewritten), never used."""
    from persona.model.fingerprint import weights_key
    from persona.model.loader import HEAD_OUTLIERS_STORE
    from persona.model.quantize import int8_supported
    from persona.paths import models_dir

    if not int8_supported():
        pytest.skip("this torch build has no fbgemm/x86 int8 kernel")
    store = models_dir() / HEAD_OUTLIERS_STORE
    key = weights_key(tiny_model_dir / "model.safetensors")
    found = load_model(tiny_model_dir, precision="int8", native=True).model.lm_head.outliers
    assert json.loads(store.read_text(encoding="utf-8"))[key] == found.tolist()
    for bad in ([999999] * len(found), [0] * len(found), found.tolist()[:-1], "x", None):
        store.write_text(json.dumps({key: bad}), encoding="utf-8")
        head = load_model(tiny_model_dir, precision="int8", native=True).model.lm_head
        assert torch.equal(head.outliers, found)
        assert json.loads(store.read_text(encoding="utf-8"))[key] == found.tolist()


def test_model_env_var_is_used(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("PERSONA_MODEL", str(tiny_model_dir))
    assert load_model().model_id == str(tiny_model_dir)


def test_missing_path_is_a_model_error():
    with pytest.raises(ModelError, match="does not exist"):
        load_model("/no/such/dir")


def test_directory_without_config_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="config.json"):
        load_model(tmp_path)


def test_config_that_is_not_a_causal_lm_is_a_model_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(ModelError):
        load_model(tmp_path)


def test_tokenizer_without_chat_template_is_refused(tiny):
    class NoTemplate:
        chat_template = None
        name_or_path = "plain-lm"

    with pytest.raises(ModelError, match="no chat template"):
        Renderer(NoTemplate())


def test_persona_turn_replaces_the_models_default_system_message(tiny, tiny_prompt):
    renderer = Renderer(tiny.tokenizer)
    messages = [{"role": "user", "content": "Hello"}]
    assert "You are a tiny test model" in renderer.text(messages, None)
    with_persona = renderer.text(messages, tiny_prompt)
    assert "You are a tiny test model" not in with_persona
    assert with_persona.startswith("<|im_start|>system\n<|im_end|>")
    assert "Be brief." in renderer.text(messages, tiny_prompt, system="Be brief.")


def test_training_example_labels_cover_only_the_reply(tiny, tiny_prompt):
    renderer = Renderer(tiny.tokenizer)
    ids, labels = renderer.render_example(
        [{"role": "user", "content": "Hello"}], "I am fine", tiny_prompt
    )
    labelled = [i for i, label in zip(ids, labels, strict=True) if label != -100]
    assert tiny.tokenizer.decode(labelled) == "I am fine<|im_end|>"
    prefix = renderer.render([{"role": "user", "content": "Hello"}], tiny_prompt)
    assert ids[: len(prefix)] == prefix


def test_a_reply_that_opens_the_conversation_renders_without_a_persona(tiny):
    renderer = Renderer(tiny.tokenizer)
    ids, labels = renderer.render_example([], "Now is the winter of our discontent", None)
    labelled = [i for i, label in zip(ids, labels, strict=True) if label != -100]
    assert tiny.tokenizer.decode(labelled) == "Now is the winter of our discontent<|im_end|>"
    assert tiny.tokenizer.decode(ids).startswith("<|im_start|>system\nYou are a tiny test model")
    with_system = renderer.render_example([], "Now is the winter", None, system="Be Richard.")
    assert "Be Richard." in tiny.tokenizer.decode(with_system[0])


def test_the_chat_model_is_loaded_on_a_thread_that_has_ended(tiny_model_dir, monkeypatch):
    """torch keeps a pool of OpenMP workers per thread that ran parallel work; the thread that
    generates must hold the only one (benchmarks/threads.py), so loading is done on a thread of
    its own that ends before load_chat_model returns."""
    import threading

    from persona.model import loader

    seen = []
    real = loader._load_chat_model

    def recording(*args, **kwargs):
        seen.append(threading.current_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(loader, "_load_chat_model", recording)
    loaded = loader.load_chat_model(tiny_model_dir, precision="fp32")
    assert loaded.model is not None
    (thread,) = seen
    assert thread is not threading.current_thread() and not thread.is_alive()


def test_work_on_a_passing_thread_gives_its_result_or_raises_its_error_here():
    from persona.errors import ModelError
    from persona.model.loader import on_passing_thread

    assert on_passing_thread(lambda a, b=0: a + b, 2, b=3) == 5

    def fails():
        raise ModelError("no such model")

    with pytest.raises(ModelError, match="no such model"):
        on_passing_thread(fails)
