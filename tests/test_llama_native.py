"""persona's own Llama decoder computes what transformers' LlamaForCausalLM computes, cache and all."""

from __future__ import annotations

import pytest
import torch

from persona.engine.torch_backend import torch_backend
from persona.model import llama
from persona.model.loader import load_model
from persona.prompt.inject import prepend_prompt
from tests.conftest import edited_copy

ATOL = 1e-5


@pytest.fixture(scope="module")
def pair(tiny_model_dir):
    """The tiny checkpoint loaded twice: transformers' model class and persona's decoder."""
    reference = load_model(tiny_model_dir)
    native = load_model(tiny_model_dir, native=True)
    assert isinstance(native.model, llama.LlamaDecoder)
    assert not isinstance(reference.model, llama.LlamaDecoder)
    return reference, native


def embeds_with_prompt(model, ids, prompt):
    embeds = model.get_input_embeddings()(torch.tensor([ids]))  # (1, T, D)
    return prepend_prompt(prompt, embeds)[0]  # (1, N+T, D)


def test_same_fingerprint_and_same_logits_with_a_soft_prompt(pair, tiny_prompt):
    reference, native = pair
    assert native.fingerprint == reference.fingerprint
    ids = list(range(3, 40))
    with torch.no_grad():
        want = reference.model(
            inputs_embeds=embeds_with_prompt(reference.model, ids, tiny_prompt.embeddings),
            use_cache=False,
        ).logits
        got = native.model(
            inputs_embeds=embeds_with_prompt(native.model, ids, tiny_prompt.embeddings),
            use_cache=False,
        ).logits
    assert (
        got.shape
        == want.shape
        == (1, tiny_prompt.num_virtual_tokens + len(ids), native.fingerprint.vocab_size)
    )
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_cached_chunks_and_steps_equal_one_uncached_pass(pair, tiny_prompt):
    _, native = pair
    model, ids = native.model, list(range(5, 45))
    with torch.no_grad():
        whole = model(
            inputs_embeds=embeds_with_prompt(model, ids, tiny_prompt.embeddings), use_cache=False
        ).logits[0]
        cache = llama.KVCache()
        first = model(
            inputs_embeds=embeds_with_prompt(model, ids[:10], tiny_prompt.embeddings),
            cache=cache,
            logits_to_keep=1,
        ).logits
        pieces = [first[0, -1]]
        chunk = model(
            input_ids=torch.tensor([ids[10:30]]), cache=cache
        ).logits  # (1, 20, V): a chunk after the cache
        pieces.extend(chunk[0, -1:])
        for token in ids[30:]:
            pieces.append(
                model(input_ids=torch.tensor([[token]]), cache=cache, logits_to_keep=1).logits[
                    0, -1
                ]
            )
    n = tiny_prompt.num_virtual_tokens
    expected = torch.stack([whole[n + 9], whole[n + 29], *whole[n + 30 :]])
    torch.testing.assert_close(torch.stack(pieces), expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(chunk[0], whole[n + 10 : n + 30], atol=ATOL, rtol=0)
    assert cache.get_seq_length() == n + len(ids)


def test_cropping_the_cache_then_continuing_equals_never_having_gone_further(pair):
    _, native = pair
    model, ids = native.model, list(range(7, 37))
    with torch.no_grad():
        cache = llama.KVCache()
        model(input_ids=torch.tensor([ids]), cache=cache)
        model(input_ids=torch.tensor([[9, 9, 9]]), cache=cache)  # a branch to throw away
        cache.crop(-3)
        assert cache.get_seq_length() == len(ids)
        branch = model(input_ids=torch.tensor([[11, 12]]), cache=cache).logits
        whole = model(input_ids=torch.tensor([ids + [11, 12]]), use_cache=False).logits
    torch.testing.assert_close(branch[0], whole[0, -2:], atol=ATOL, rtol=0)


def test_a_cache_grows_past_its_first_capacity_as_transformers_cache_does(pair):
    reference, native = pair
    ids = [
        (3 + 7 * i) % 50 + 3 for i in range(150)
    ]  # past the first capacity (64) and its doubling
    with torch.no_grad():
        cache, past = llama.KVCache(), torch_backend(reference.model).new_cache()
        steps = [
            native.model(input_ids=torch.tensor([[token]]), cache=cache).logits[0, -1]
            for token in ids
        ]
        want = [
            reference.model(input_ids=torch.tensor([[token]]), cache=past).logits[0, -1]
            for token in ids
        ]
    assert cache.get_seq_length() == len(ids)
    torch.testing.assert_close(torch.stack(steps), torch.stack(want), atol=ATOL, rtol=0)


def test_left_padded_batch_with_position_ids_matches_transformers(pair):
    reference, native = pair
    rows = [list(range(3, 20)), list(range(20, 28)), list(range(30, 33))]
    width = max(len(row) for row in rows)
    ids = torch.tensor([[0] * (width - len(row)) + row for row in rows])  # (3, L)
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    with torch.no_grad():
        outputs = []
        for loaded in (reference, native):
            cache = torch_backend(loaded.model).new_cache()
            first = loaded.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                logits_to_keep=1,
                cache=cache,
            ).logits
            step_mask = torch.cat([mask, mask.new_ones(3, 1)], dim=1)
            second = loaded.model(
                input_ids=torch.tensor([[5], [6], [7]]),
                attention_mask=step_mask,
                position_ids=positions[:, -1:] + 1,
                cache=cache,
            ).logits
            outputs.append((first, second))
    (want_first, want_second), (got_first, got_second) = outputs
    assert not torch.isnan(got_first).any() and not torch.isnan(got_second).any()
    torch.testing.assert_close(got_first, want_first, atol=ATOL, rtol=0)
    torch.testing.assert_close(got_second, want_second, atol=ATOL, rtol=0)


def test_int8_native_with_fused_projections_equals_int8_transformers(tiny_model_dir):
    ids = list(range(3, 30))
    reference = load_model(tiny_model_dir, precision="int8").model
    native = load_model(tiny_model_dir, precision="int8", native=True).model
    layer = native.model.layers[0]
    assert (
        layer.self_attn.qkv_proj is not None and layer.mlp.gate_up_proj is not None
    )  # fused: 4 int8 calls a layer, not 7
    with torch.no_grad():
        want = reference(input_ids=torch.tensor([ids]), use_cache=False).logits
        got = native(input_ids=torch.tensor([ids]), use_cache=False).logits
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)  # many rows: the dequantised path
        cache, past = llama.KVCache(), torch_backend(reference).new_cache()
        for token in ids[:6]:  # one row at a time: fbgemm's kernel, fused against unfused
            step = native(input_ids=torch.tensor([[token]]), cache=cache).logits
            torch.testing.assert_close(
                step,
                reference(input_ids=torch.tensor([[token]]), cache=past).logits,
                atol=ATOL,
                rtol=0,
            )


def test_the_single_token_step_computes_what_the_general_path_does_and_follows_replaced_layers(
    tiny_model_dir, monkeypatch
):
    """A decode step of one sequence runs from the decode plan the loader prepared (fewer
    operations, no layer's forward called); an all-ones attention mask takes forward's general
    path. They agree bit for bit, and whatever changes after a step (a layer replaced, a weight
    reassigned, weights loaded, quantized, fused) is what the next step uses once the change is
    planned again."""
    import copy

    from persona.model.quantize import quantize_int8

    model = load_model(tiny_model_dir, native=True).model
    assert model.prepared_for_decode  # the loader planned it
    layer_calls = []
    layer_forward = llama.DecoderLayer.forward

    def counting(self, *args):
        layer_calls.append(1)
        return layer_forward(self, *args)

    monkeypatch.setattr(llama.DecoderLayer, "forward", counting)
    ids = list(range(3, 30))

    def compare(cache, token, *, step_path=True, on=None):
        decoder = on if on is not None else model
        ones = torch.ones(1, cache.get_seq_length() + 1, dtype=torch.long)
        general = decoder(
            input_ids=torch.tensor([[token]]), attention_mask=ones, cache=cache
        ).logits
        cache.crop(-1)
        del layer_calls[:]
        step = decoder(input_ids=torch.tensor([[token]]), cache=cache).logits
        # the step calls no layer's forward; where it declines, the general path calls them all
        assert len(layer_calls) == (0 if step_path else len(decoder.model.layers))
        assert torch.equal(step, general)
        return step

    with torch.no_grad():
        cache = llama.KVCache()
        model(input_ids=torch.tensor([ids[:10]]), cache=cache)
        for token in ids[10:14]:
            compare(cache, token)
        old = compare(cache, ids[14])
        cache.crop(-1)
        attention = model.model.layers[1].self_attn
        replacement = torch.nn.Linear(
            attention.o_proj.in_features, attention.o_proj.out_features, bias=False
        )
        torch.nn.init.normal_(replacement.weight, std=0.5)
        attention.o_proj = replacement
        assert model.prepare_for_decode()  # a plan made before this holds the old projection
        new = compare(cache, ids[14])
        assert not torch.allclose(new, old, atol=1e-3)
        cache.crop(-1)
        attention.o_proj.weight = torch.nn.Parameter(torch.randn_like(attention.o_proj.weight))
        model.prepare_for_decode()  # nor the old weight
        newer = compare(cache, ids[14])
        assert not torch.allclose(newer, new, atol=1e-3)
        cache.crop(-1)
        torch.nn.init.normal_(attention.o_proj.weight, std=0.5)  # in place: nothing to plan again
        assert not torch.allclose(compare(cache, ids[14]), newer, atol=1e-3)
        seen = []
        handle = model.model.layers[0].mlp.down_proj.register_forward_hook(
            lambda *args: seen.append(1)
        )
        compare(cache, ids[15], step_path=False)  # a hook on a module the step skips: general path
        assert seen
        handle.remove()
        compare(cache, ids[16])
        model.drop_decode_plan()
        compare(cache, ids[17], step_path=False)  # no plan: the general path, the same numbers
        model.prepare_for_decode()
        cache.crop(-1)
        twin = copy.deepcopy(model)  # a copy plans its own modules, not the original's
        assert twin.prepared_for_decode
        torch.nn.init.normal_(
            twin.model.layers[-1].self_attn.q_proj.weight, std=0.5
        )  # in place, in the copy only
        twin_cache = llama.KVCache()
        twin(input_ids=torch.tensor([ids[:17]]), cache=twin_cache)
        twin_step = compare(twin_cache, ids[17], on=twin)
        assert not torch.allclose(twin_step, compare(cache, ids[17]), atol=1e-3)
        state = {
            name: torch.randn_like(tensor) * 0.1 for name, tensor in model.state_dict().items()
        }
        before = compare(cache, ids[18])
        cache.crop(-1)
        model.load_state_dict(state, assign=True)  # new parameters: planned again by the call
        assert not torch.allclose(compare(cache, ids[18]), before, atol=1e-3)
        model.load_state_dict(twin.state_dict())
        compare(cache, ids[19])
        model.to(torch.float32)  # a move or cast plans again too
        compare(cache, ids[20])
        quantize_int8(model)  # every projection replaced, then fused and planned again
        model.fuse_int8_projections()
        for token in ids[21:]:
            compare(cache, token)


@pytest.mark.parametrize(
    "change",
    [
        {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}},
        {"hidden_act": "gelu"},
        {"model_type": "mistral", "architectures": ["MistralForCausalLM"]},
    ],
)
def test_configs_it_does_not_compute_exactly_load_through_transformers(
    tiny_model_dir, tmp_path, change
):
    loaded = load_model(
        edited_copy(tiny_model_dir, tmp_path / "model", "config.json", change), native=True
    )
    assert not isinstance(loaded.model, llama.LlamaDecoder)
    with torch.no_grad():
        assert (
            loaded.model(input_ids=torch.tensor([[3, 4, 5]])).logits.shape[-1]
            == loaded.fingerprint.vocab_size
        )
