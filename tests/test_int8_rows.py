"""int8 for batched rows: each row quantized over its own range in one kernel call for all rows, so a
row computes the same alone, in a batch, or in a prefill chunk; the server's int8 replies equal chat's."""

from __future__ import annotations

import pytest
import torch

from persona.engine.batch import BatchRequest, generate_batch
from persona.engine.chat import ChatEngine
from persona.engine.config import GenerationConfig
from persona.errors import ConfigError
from persona.model import quantize
from persona.model.loader import load_model
from persona.prompt.deep import KVLayout
from persona.prompt.softprompt import SoftPrompt
from tests.test_batch import solo_token_ids
from tests.test_scheduler import QUESTIONS, one_question_each, solo_and_scheduled

GREEDY = GenerationConfig(temperature=0, repetition_penalty=1.0, max_new_tokens=12)
TINY_LAYOUT = KVLayout(layers=2, kv_heads=2, head_dim=8)  # the tiny Llama's KV cache

pytestmark = pytest.mark.skipif(
    not quantize.int8_supported(), reason="this torch build has no fbgemm/x86 int8 kernel"
)


@pytest.fixture(scope="module")
def tiny_int8(tiny_model_dir):
    """The tiny model as chat and serve load it in int8: persona's own decoder."""
    return load_model(tiny_model_dir, precision="int8", native=True)


def layer(bias: bool, seed: int = 0) -> quantize.Int8Linear:
    torch.manual_seed(seed)
    return quantize.Int8Linear.from_linear(torch.nn.Linear(48, 24, bias=bias))


@pytest.mark.parametrize("bias", [False, True])
def test_a_row_computes_the_same_alone_and_beside_any_rows(bias):
    int8 = layer(bias)
    rows = torch.randn(9, 48)
    rows[0] *= 1000.0  # an outlier row, as the first positions of a soft prompt produce
    rows[3] = 0.0  # a row of zeros
    rows[5] = -rows[5].abs()  # a row of one sign
    with torch.inference_mode():
        together = int8.row(rows)  # (9, 24): a decode step of nine rows
        for index in range(rows.shape[0]):
            assert torch.equal(together[index : index + 1], int8.row(rows[index : index + 1]))
        assert torch.equal(int8.row(rows[2:7]), together[2:7])


@pytest.mark.parametrize("bias", [False, True])
def test_each_row_keeps_its_own_precision(bias):
    int8 = layer(bias, seed=1)
    rows = torch.randn(12, 48)
    rows[0] *= 1000.0
    with torch.inference_mode():
        exact = torch.nn.functional.linear(rows, int8.weight, int8.bias)  # exact activations
        approx = int8.row(rows)
        with quantize.exact_activations():  # encoding a prompt: exact activations
            assert torch.allclose(int8(rows), exact, atol=1e-4)
    for index in range(rows.shape[0]):
        relative = (approx[index] - exact[index]).abs().max() / exact[index].abs().max()
        assert float(relative) < 0.05, index


def test_a_row_of_zeros_gives_the_bias():
    int8 = layer(True)
    with torch.inference_mode():
        assert torch.equal(int8.row(torch.zeros(2, 48)), int8.bias.expand(2, -1))


def test_the_previous_kernel_is_still_there_and_an_unknown_one_is_refused():
    model = torch.nn.Sequential(layer(False), layer(True))
    quantize.set_int8_kernel(model, "row-by-row")
    assert all(module.kernel == "row-by-row" for module in model)
    rows = torch.randn(8, 48)  # more than ROW_KERNEL_MAX_ROWS: the dequantised weight
    with torch.inference_mode():
        assert torch.allclose(model[0](rows), rows @ model[0].weight.T, atol=1e-5)
    with pytest.raises(ConfigError, match="row-by-row"):
        quantize.set_int8_kernel(model, "int4")


def deep(tiny, seed: int) -> SoftPrompt:
    generator = torch.Generator().manual_seed(seed)
    return SoftPrompt(
        torch.randn(2 + seed % 3, TINY_LAYOUT.width, generator=generator),
        name=f"d{seed}",
        fingerprint=tiny.fingerprint,
        kind="deep",
        layout=TINY_LAYOUT,
    )


def mixed_personas(tiny, count: int) -> list[SoftPrompt | None]:
    """None, then soft and deep personas in turn."""
    found: list[SoftPrompt | None] = [None]
    for seed in range(1, count):
        if seed % 2:
            generator = torch.Generator().manual_seed(seed)
            embeddings = torch.randn(
                3 + seed % 5, tiny.fingerprint.hidden_size, generator=generator
            )
            found.append(SoftPrompt(embeddings, name=f"p{seed}", fingerprint=tiny.fingerprint))
        else:
            found.append(deep(tiny, seed))
    return found


def test_int8_batched_server_replies_equal_chats_solo_replies(tiny_int8):
    jobs = one_question_each(mixed_personas(tiny_int8, 12))
    alone, sinks, widths, _ = solo_and_scheduled(
        tiny_int8, jobs, GREEDY, max_rows=12, prefill_chunk=5
    )
    assert len(set(alone)) > 6, "replies this alike would make the comparison meaningless"
    assert [sink.text for sink in sinks] == alone
    assert max(widths) >= 3  # rows joined while others decoded, and decoded together


def test_int8_batch_rows_equal_their_solo_runs(tiny_int8):
    engine = ChatEngine(tiny_int8)
    requests = [
        BatchRequest([{"role": "user", "content": question}], persona)
        for question, persona in zip(QUESTIONS * 2, mixed_personas(tiny_int8, 8), strict=True)
    ]
    results, _ = generate_batch(engine, requests, GREEDY)
    assert [result.token_ids for result in results] == solo_token_ids(engine, requests, GREEDY)
