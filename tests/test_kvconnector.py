"""What persona's vLLM KV connector path does without vLLM: a soft persona turned into keys and
values answers as the soft persona does; the connector's store takes only tensors whose values
hash to the name asked for, from a folder or from the gateway's route behind its API key; the
request body puts the placeholders and the persona's name where the connector reads them."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from persona.engine.backend import backend_for
from persona.engine.config import GenerationConfig
from persona.engine.prompt_kv import persona_kv
from persona.engine.vllm.kv import PersonaKV
from persona.engine.vllm.wire import ids_body
from persona.kvconnector.store import (
    ROUTE,
    KVSource,
    KVStore,
    KVUnavailable,
    kv_bytes,
    kv_sha256,
    parse_kv,
)
from persona.prompt.deep import KVLayout
from persona.prompt.softprompt import SoftPrompt


def test_a_soft_persona_as_keys_and_values_answers_as_the_soft_persona(each_tiny, tiny_prompt):
    backend = backend_for(each_tiny)
    kv = persona_kv(backend, tiny_prompt)  # (N, W)
    layout = KVLayout.of_config(each_tiny.model.config)
    assert kv.shape == (tiny_prompt.num_virtual_tokens, layout.width)
    ids = [5, 9, 14, 3, 22, 7]
    soft = backend.prefill(backend.new_cache(), ids, tiny_prompt.embeddings)  # (V,)
    deep = backend.prefill(backend.new_cache(), ids, kv, kind="deep")  # (V,)
    torch.testing.assert_close(deep, soft, rtol=1e-4, atol=1e-4)
    # and it is the soft prompt's own: another prompt's keys and values answer otherwise
    other = persona_kv(backend, _scaled(tiny_prompt, 2.0))
    assert not torch.allclose(backend.prefill(backend.new_cache(), ids, other, kind="deep"), soft)


def _scaled(prompt: SoftPrompt, factor: float) -> SoftPrompt:
    return SoftPrompt(prompt.embeddings * factor, name="other", fingerprint=prompt.fingerprint)


def test_the_store_takes_only_what_hashes_to_its_name(tmp_path: Path):
    kv = torch.randn(4, 24)
    data = kv_bytes(kv)
    name = kv_sha256(kv)
    assert torch.equal(parse_kv(data, name), kv)
    with pytest.raises(KVUnavailable, match="does not match its hash"):
        parse_kv(data, "0" * 64)
    with pytest.raises(KVUnavailable, match="not safetensors"):
        parse_kv(b"not a tensor file", name)
    folder = tmp_path / "kv"
    folder.mkdir()
    (folder / f"{name}.safetensors").write_bytes(data)
    impostor = "1" * 64
    (folder / f"{impostor}.safetensors").write_bytes(data)  # right tensor, wrong name
    store = KVStore(KVSource(directory=str(folder), cache_dir=str(tmp_path / "cache")))
    assert torch.equal(store.get(name), kv)
    with pytest.raises(KVUnavailable, match="does not match its hash") as refused:
        store.get(impostor)
    assert "\n" not in str(refused.value)
    with pytest.raises(KVUnavailable, match="not a lowercase sha256"):
        store.get("../etc/passwd")


class _Gateway(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    key = "sesame"
    asked: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.asked.append(self.path)
        if self.headers.get("Authorization") != f"Bearer {self.key}":
            self.send_error(401)
            return
        name = self.path.split("/")[-2]
        data = self.files.get(name)
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def gateway():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Gateway.asked.clear()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_store_fetches_from_the_gateway_with_its_key_and_keeps_what_it_fetched(
    gateway, tmp_path: Path
):
    kv = torch.randn(3, 16)
    name = kv_sha256(kv)
    liar = "2" * 64
    _Gateway.files = {name: kv_bytes(kv), liar: kv_bytes(kv)}
    cache = tmp_path / "cache"
    source = KVSource(url=gateway, key="sesame", cache_dir=str(cache), timeout_s=5)
    KVStore._memory.clear()
    assert torch.equal(KVStore(source).get(name), kv)
    assert _Gateway.asked == [ROUTE.format(sha256=name)]
    assert (cache / f"{name}.safetensors").read_bytes() == kv_bytes(kv)
    KVStore._memory.clear()
    assert torch.equal(KVStore(source).get(name), kv)  # from the disk cache: not asked again
    assert len(_Gateway.asked) == 1
    with pytest.raises(KVUnavailable, match="does not match its hash"):
        KVStore(source).get(liar)
    assert not (cache / f"{liar}.safetensors").exists()
    with pytest.raises(KVUnavailable, match="answered 401"):
        KVStore(KVSource(url=gateway, key="wrong", cache_dir=str(cache))).get("3" * 64)
    with pytest.raises(KVUnavailable, match="answered 404"):
        KVStore(source).get("4" * 64)


def test_the_connector_source_comes_from_vllm_extra_config(tmp_path: Path):
    source = KVSource.from_extra_config(
        {"url": "http://gw:8000/", "key_env": "GW_KEY", "directory": str(tmp_path)},
        environ={"GW_KEY": "k"},
    )
    assert (source.url, source.key, source.directory) == ("http://gw:8000", "k", str(tmp_path))
    with pytest.raises(ValueError, match="needs a url or a directory"):
        KVSource.from_extra_config({})
    with pytest.raises(ValueError, match="must start with http"):
        KVSource.from_extra_config({"url": "file:///etc"})


def test_the_gateway_makes_each_persona_s_keys_and_values_once(tiny_native, tiny_prompt, tmp_path):
    kvs = PersonaKV(tmp_path / "kv", None)
    kvs._soft_to_kv = lambda persona: persona_kv(
        backend_for(tiny_native), persona
    )  # the tiny model
    name, rows = kvs.name_of(tiny_prompt)
    assert rows == tiny_prompt.num_virtual_tokens
    stored = parse_kv(kvs.read(name), name)
    torch.testing.assert_close(stored, persona_kv(backend_for(tiny_native), tiny_prompt))
    again = PersonaKV(tmp_path / "kv", None)  # a later gateway: found on disk, not made again
    again._soft_to_kv = None
    assert again.name_of(tiny_prompt) == (name, rows)
    assert kvs.read("../../etc/passwd") is None and kvs.read("5" * 64) is None


def test_a_deep_persona_s_keys_and_values_are_named_by_its_own_checksum(tmp_path):
    layout = KVLayout(2, 2, 4)
    deep = SoftPrompt(
        torch.randn(3, layout.width), name="iago", kind="deep", layout=layout, fingerprint=None
    )
    name, rows = PersonaKV(tmp_path, None).name_of(deep)
    assert (name, rows) == (deep.sha256, 3)


def test_the_request_puts_n_placeholders_first_and_names_the_persona():
    config = GenerationConfig(temperature=0, repetition_penalty=1.1)
    body = ids_body("m", [7, 8, 9], config, [2], ("a" * 64, 4, 96))
    assert body["prompt"] == [7, 7, 7, 7, 7, 8, 9]  # the first id, which the penalty counts anyway
    assert body["kv_transfer_params"] == {
        "persona_kv": "a" * 64,
        "persona_rows": 4,
        "persona_width": 96,
    }
    assert body["cache_salt"] == "a" * 64  # one persona's cached blocks never answer another's
    assert body["repetition_penalty"] == 1.1
    bare = ids_body("m", [7, 8, 9], config, [2])
    assert bare["prompt"] == [7, 8, 9] and "kv_transfer_params" not in bare
