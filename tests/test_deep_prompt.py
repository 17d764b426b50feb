"""Deep prompts (`--kind deep`): keys and values at every layer, from training to every engine path.

The reference throughout is exact: a deep prompt made from input rows E (the keys and values the
model computes for them) must act as the soft prompt E does, and PEFT's own PREFIX_TUNING model
must compute what persona's engine computes with the same tensor.
"""

from __future__ import annotations

import json

import pytest
import torch

from persona.cli.main import main
from persona.engine.backend import check_runs
from persona.engine.batch import BatchRequest, generate_batch
from persona.engine.chat import ChatEngine
from persona.engine.config import GenerationConfig
from persona.engine.scheduler import Request, Scheduler
from persona.errors import PromptFormatError, PromptMismatchError
from persona.library import open_library
from persona.prompt.deep import KVLayout, join_prefix, prefix_from_embeddings, split_prefix
from persona.prompt.init import initial_prompt
from persona.prompt.softprompt import SoftPrompt
from persona.train.loss import labelled_nll
from tests.helpers import train_args, write_log

GREEDY = GenerationConfig(temperature=0.0, max_new_tokens=12)
HELLO = [{"role": "user", "content": "Hello there! How are you today?"}]


@pytest.fixture
def rows(tiny) -> torch.Tensor:
    torch.manual_seed(3)
    return torch.randn(5, tiny.model.config.hidden_size) * 0.5  # (N, D)


@pytest.fixture
def deep_pair(tiny, rows) -> tuple[SoftPrompt, SoftPrompt]:
    """(a soft prompt of rows E, the deep prompt of what the model computes for E)."""
    layout = KVLayout.of_config(tiny.model.config)
    soft = SoftPrompt(embeddings=rows, name="soft", fingerprint=tiny.fingerprint)
    deep = SoftPrompt(
        embeddings=prefix_from_embeddings(tiny.model, rows),
        name="deep",
        fingerprint=tiny.fingerprint,
        kind="deep",
        layout=layout,
    )
    return soft, deep


def test_the_layout_is_the_models_and_splitting_is_undone_by_joining(tiny, deep_pair) -> None:
    _, deep = deep_pair
    config = tiny.model.config
    layout = KVLayout.of_config(config)
    head_dim = config.hidden_size // config.num_attention_heads
    assert layout == KVLayout(config.num_hidden_layers, config.num_key_value_heads, head_dim)
    assert deep.width == layout.width == config.num_hidden_layers * 2 * layout.kv_heads * head_dim
    pairs = split_prefix(deep.embeddings, layout)
    assert len(pairs) == layout.layers
    assert pairs[0][0].shape == (1, layout.kv_heads, 5, head_dim)
    assert torch.equal(join_prefix(pairs), deep.embeddings)
    assert KVLayout.parse(str(layout)) == layout
    with pytest.raises(PromptFormatError, match="LAYERSxKV_HEADSxHEAD_DIM"):
        KVLayout.parse("30x0x64")


def test_a_deep_prompt_of_e_computes_what_the_soft_prompt_e_computes(each_tiny, deep_pair) -> None:
    soft, deep = deep_pair
    backend = ChatEngine(each_tiny).backend
    ids = [5, 9, 12, 7, 30]
    want = backend.prefill(backend.new_cache(), ids, soft.embeddings)
    got = backend.prefill(backend.new_cache(), ids, deep.embeddings, kind="deep")
    assert torch.allclose(got, want, atol=1e-5)
    other = backend.prefill(backend.new_cache(), ids)
    assert not torch.allclose(got, other, atol=1e-3)  # the prefix does act


def test_persona_computes_what_peft_prefix_tuning_computes(tiny_model_dir, tiny, deep_pair) -> None:
    from peft import PrefixTuningConfig, get_peft_model
    from transformers import LlamaForCausalLM

    _, deep = deep_pair
    reference = get_peft_model(
        LlamaForCausalLM.from_pretrained(tiny_model_dir),
        PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5),
    )
    ids = [5, 9, 12, 7, 30]
    with torch.no_grad():
        reference.prompt_encoder["default"].embedding.weight.copy_(deep.embeddings)
        want = reference(input_ids=torch.tensor([ids])).logits[0, -1]  # (V,)
    backend = ChatEngine(tiny).backend
    got = backend.prefill(backend.new_cache(), ids, deep.embeddings, kind="deep")
    assert torch.allclose(got, want, atol=1e-5)


def test_the_training_loss_of_a_deep_prompt_is_the_soft_prompts_for_the_same_e(
    tiny, deep_pair
) -> None:
    soft, deep = deep_pair
    ids = torch.tensor([[5, 9, 12, 7, 30, 3], [8, 6, 4, 11, 0, 0]])  # (B, T), right-padded
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    labels[:, :2] = -100  # the reply starts after two tokens
    want, count = labelled_nll(tiny.model, soft.embeddings, ids, mask, labels)
    got, deep_count = labelled_nll(
        tiny.model, deep.embeddings, ids, mask, labels, layout=deep.layout
    )
    assert count == deep_count
    assert torch.allclose(got, want, atol=1e-4)
    prompt = deep.embeddings.clone().requires_grad_(True)
    total, _ = labelled_nll(tiny.model, prompt, ids, mask, labels, layout=deep.layout)
    total.backward()
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0  # it trains


def test_chat_batches_and_the_scheduler_run_deep_and_soft_rows_side_by_side(
    each_tiny, deep_pair
) -> None:
    soft, deep = deep_pair
    engine = ChatEngine(each_tiny)
    alone = {p.name: engine.reply(HELLO, p, GREEDY) for p in (soft, deep)}
    assert alone["soft"] == alone["deep"]  # the same prefix, two ways in
    follow = [*HELLO, {"role": "assistant", "content": alone["deep"]}]
    follow.append({"role": "user", "content": "And tomorrow?"})
    again = engine.reply(follow, deep, GREEDY)  # reuses the deep prompt's cache
    assert engine.last.reused_tokens > 0
    assert again == ChatEngine(each_tiny).reply(follow, deep, GREEDY)
    results, _ = generate_batch(
        engine, [BatchRequest(HELLO, deep), BatchRequest(HELLO, soft), BatchRequest(HELLO)], GREEDY
    )
    assert [r.text for r in results[:2]] == [alone["deep"], alone["soft"]]

    class Collect:
        def __init__(self) -> None:
            self.text, self.done = "", None

        def piece(self, text: str) -> None:
            self.text += text

        def finish(self, *args: object) -> None:
            self.done = args

        def error(self, exc: BaseException) -> None:
            self.done = exc

    scheduler = Scheduler(engine)
    try:
        sinks = [Collect(), Collect()]
        for persona, sink in zip((deep, None), sinks, strict=True):
            scheduler.submit(Request(HELLO, persona, GREEDY), sink)
        for _ in range(400):
            if all(s.done is not None for s in sinks):
                break
            import time

            time.sleep(0.05)
        assert sinks[0].text == alone["deep"]
        assert sinks[1].text == engine.reply(HELLO, None, GREEDY)
    finally:
        scheduler.close()


def test_backends_without_a_layout_refuse_a_deep_persona_in_one_line(tiny, deep_pair) -> None:
    soft, deep = deep_pair
    check_runs(soft, tiny.fingerprint, None, "vllm")  # a soft one is fine
    for backend in ("vllm", "llama"):
        with pytest.raises(PromptMismatchError) as caught:
            check_runs(deep, tiny.fingerprint, None, backend)
        message = str(caught.value)
        assert "\n" not in message
        assert f"the {backend} backend cannot run" in message and "--backend torch" in message


def test_a_deep_prompt_for_another_layout_is_refused(tiny, deep_pair) -> None:
    _, deep = deep_pair
    other = KVLayout(deep.layout.layers + 1, deep.layout.kv_heads, deep.layout.head_dim)
    with pytest.raises(PromptMismatchError, match=r"holds keys and values for 2x2x8"):
        deep.check_fits(tiny.fingerprint, other)


def test_the_file_keeps_the_kind_and_layout_and_refuses_damage(deep_pair, tmp_path) -> None:
    soft, deep = deep_pair
    back = SoftPrompt.from_bytes(deep.to_bytes())
    assert (back.kind, back.layout) == ("deep", deep.layout)
    assert torch.equal(back.embeddings, deep.embeddings)
    assert "kind" not in soft.metadata() and "layout" not in soft.metadata()  # soft files unchanged
    with pytest.raises(PromptFormatError, match="needs its layout"):
        SoftPrompt(embeddings=deep.embeddings, name="x", kind="deep")
    with pytest.raises(PromptFormatError, match="has width 64 but its layout 3x2x8 needs 96"):
        SoftPrompt(embeddings=deep.embeddings, name="x", kind="deep", layout=KVLayout(3, 2, 8))
    with pytest.raises(PromptFormatError, match="unknown kind 'wide'"):
        SoftPrompt(embeddings=deep.embeddings, name="x", kind="wide")


def test_persona_train_kind_deep_stores_a_deep_persona_that_chat_and_show_use(
    tmp_path, tiny_model_dir, tiny, capsys
) -> None:
    log = write_log(tmp_path)
    args = train_args(log, tiny_model_dir, "--description", "a bard", "--kind", "deep")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "stored persona 'bob' version 1" in out
    assert "  deep prompt " in out and "deep prompt - written" in out  # the row is named for it
    library = open_library()
    try:
        prompt = library.get_prompt("bob")
        info = library.get_persona("bob")
        listed = {p.name: p for p in library.list_personas()}
    finally:
        library.close()
    layout = KVLayout.of_config(tiny.model.config)
    assert (prompt.kind, prompt.layout, prompt.num_virtual_tokens) == ("deep", layout, 4)
    assert info.versions[0].kind == listed["bob"].kind == "deep"
    assert info.versions[0].training["config"]["lr"] == 0.02  # the deep prompt's own default
    rows, _ = initial_prompt(tiny.model, tiny.tokenizer, 4, method="text", description="a bard")
    start = prefix_from_embeddings(tiny.model, rows)  # where training began: the description's
    assert prompt.embeddings.shape == start.shape
    assert not torch.allclose(prompt.embeddings, start)  # and the trained prompt moved from it
    assert ChatEngine(tiny).reply(HELLO, prompt, GREEDY)  # chat runs it

    assert main(["show", "bob"]) == 0
    out = capsys.readouterr().out
    assert "deep: keys and values of 4 virtual tokens at every layer" in out
    assert "fingerprint:" in out and "trained on:" in out  # the rest of the version, as for any
    assert main(["list"]) == 0
    assert "4x32 deep" in capsys.readouterr().out
    reply = [
        "reply", "--persona", "bob", "--model", str(tiny_model_dir), "--local",
        "--temperature", "0", "--max-tokens", "4", "--json", "Hello",
    ]  # fmt: skip
    assert main(reply) == 0
    assert json.loads(capsys.readouterr().out)["reply"]


def store(prompt: SoftPrompt, name: str, path=None) -> None:
    library = open_library(path)
    try:
        library.add_version(name, prompt)
    finally:
        library.close()


def test_a_server_on_persona_s_backend_serves_a_deep_persona_to_an_openai_client(
    tiny_model_dir, tiny, deep_pair
) -> None:
    from openai import OpenAI

    from tests.serving import running_server

    soft, deep = deep_pair
    store(deep, "deepbard")
    with running_server("--model", str(tiny_model_dir)) as running:
        client = OpenAI(base_url=running.url, api_key="none", max_retries=0, timeout=60)
        assert "deepbard" in [m.id for m in client.models.list().data]
        answer = client.chat.completions.create(
            model="deepbard", messages=HELLO, temperature=0, max_tokens=12
        )
    # a batching server computes in float32, as `tiny` does
    assert answer.choices[0].message.content == ChatEngine(tiny).reply(HELLO, deep, GREEDY)


def test_a_server_without_a_layout_neither_lists_nor_runs_a_deep_persona(tiny, deep_pair) -> None:
    from persona.serve.catalog import Catalog
    from persona.serve.errors import APIError

    soft, deep = deep_pair
    store(deep, "deepbard")
    store(soft, "softbard")
    library = open_library()
    try:
        catalog = Catalog(library, tiny.fingerprint, "/models/tiny", None, "llama")
        listed = [m["id"] for m in catalog.models()]
        assert "softbard" in listed and "deepbard" not in listed
        assert catalog.resolve("softbard") is not None
        with pytest.raises(APIError) as caught:
            catalog.resolve("deepbard")
        assert caught.value.status == 400 and "the llama backend cannot run" in str(caught.value)
        for backend in ("torch", "vllm"):  # vLLM takes every persona as keys and values
            with_layout = Catalog(library, tiny.fingerprint, "/models/tiny", deep.layout, backend)
            assert "deepbard" in [m["id"] for m in with_layout.models()]
            assert with_layout.resolve("deepbard") is not None
    finally:
        library.close()
