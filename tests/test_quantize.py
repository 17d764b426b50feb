"""The int8 chat path: decoder Linear layers and the output head int8 (the head with its outlier channels beside), the embedding float16, fingerprint untouched."""

from __future__ import annotations

import pytest
import torch

from persona.engine.chat import ChatEngine
from persona.engine.config import GenerationConfig
from persona.errors import ConfigError
from persona.model import quantize
from persona.model.loader import load_model


@pytest.mark.parametrize("native", [False, True])
def test_int8_keeps_the_fingerprint_quantizes_the_head_and_still_chats(
    tiny_model_dir, tiny, tiny_prompt, native
):
    quantized = load_model(tiny_model_dir, precision="int8", native=native)
    assert quantized.precision == "int8"
    assert quantized.fingerprint == tiny.fingerprint  # soft prompts trained on fp32 still fit
    decoder_linears = [
        m
        for m in quantized.model.model.modules()
        if isinstance(m, torch.nn.Linear | quantize.Int8Linear)
    ]
    assert decoder_linears and all(isinstance(m, quantize.Int8Linear) for m in decoder_linears)
    head, embedding = quantized.model.lm_head, quantized.model.get_input_embeddings()
    assert isinstance(head, quantize.Int8Linear) and isinstance(
        embedding, quantize.Float16Embedding
    )
    assert head.outliers is not None and head.outliers.numel() == min(
        quantize.HEAD_OUTLIERS, head.in_features
    )
    assert not head.exact_prompts  # a prompt's logits come from the same head as a reply's
    ids = torch.tensor([[3, 4, 5, 9]])
    fp32_table = tiny.model.get_input_embeddings().weight
    looked_up = embedding(ids)
    assert looked_up.dtype == torch.float32
    assert torch.equal(looked_up, fp32_table[ids].to(torch.float16).to(torch.float32))
    engine = ChatEngine(quantized)
    engine.reply(
        [{"role": "user", "content": "Hello there!"}],
        tiny_prompt,
        GenerationConfig(temperature=0, repetition_penalty=1.0, max_new_tokens=6),
    )
    assert engine.last.new_tokens + (engine.last.finish_reason == "stop") >= 1


def test_int8_logits_stay_close_to_fp32(tiny_model_dir, tiny):
    quantized = load_model(tiny_model_dir, precision="int8")
    ids = tiny.tokenizer(
        "To be, or not to be, that is the question.", return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        reference = torch.log_softmax(tiny.model(ids).logits, dim=-1)  # (1, T, V)
        approx = torch.log_softmax(quantized.model(ids).logits, dim=-1)  # (1, T, V)
    drift = (reference.exp() * (reference - approx)).sum(-1).mean()  # mean KL(fp32 || int8)
    assert float(drift) < 0.05


def test_each_row_gets_its_own_activation_scale():
    """A row with huge activations (a virtual token) must not wreck the precision of the others."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    layer = quantize.Int8Linear.from_linear(linear)
    rows = torch.randn(3, 64)
    rows[0] *= 1000.0  # an outlier row, as the first positions of a soft prompt produce
    with torch.no_grad():
        exact = torch.nn.functional.linear(
            rows, layer.weight, layer.bias
        )  # the int8 weights, exact activations
        kernel = layer.row(rows)  # a decode step: every row over its own range, one kernel call
        alone = layer.row(rows[2:])
    assert torch.equal(kernel[2:], alone)  # the outlier row did not change the small row's result
    relative = (kernel[2] - exact[2]).abs().max() / exact[2].abs().max()
    assert float(relative) < 0.05


def test_a_prompt_uses_the_dequantised_weight_exactly():
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 8, bias=False)
    layer = quantize.Int8Linear.from_linear(linear)
    rows = torch.randn(2, 7, 16)  # 14 rows: above ROW_KERNEL_MAX_ROWS
    with torch.no_grad(), quantize.exact_activations():  # encoding a prompt
        assert torch.allclose(layer(rows), rows @ layer.weight.T, atol=1e-6)
        assert (
            layer.weight - linear.weight
        ).abs().max() <= layer.scale.max() / 2 + 1e-7  # half a step of rounding


def test_the_shared_dequantisation_buffer_serves_layers_of_any_size_in_and_out_of_inference_mode():
    torch.manual_seed(0)
    small = quantize.Int8Linear.from_linear(torch.nn.Linear(16, 8, bias=True))
    large = quantize.Int8Linear.from_linear(torch.nn.Linear(16, 40, bias=False))
    rows = torch.randn(12, 16)
    with torch.inference_mode(), quantize.exact_activations():  # the buffer is first made here
        first = small(rows)
    with torch.no_grad(), quantize.exact_activations():
        for layer in (large, small, large):
            expected = rows @ layer.weight.T + (layer.bias if layer.bias is not None else 0)
            assert torch.allclose(layer(rows), expected, atol=1e-6)
        assert torch.equal(small(rows), first)


def test_unknown_precision_names_the_choices(tiny_model_dir):
    with pytest.raises(ConfigError, match="fp32"):
        load_model(tiny_model_dir, precision="int4")


def test_auto_falls_back_to_float32_where_int8_has_no_kernel(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(quantize, "int8_supported", lambda: False)
    assert load_model(tiny_model_dir, precision="auto").precision == "fp32"
    with pytest.raises(ConfigError, match="--precision fp32"):
        load_model(tiny_model_dir, precision="int8")


def test_auto_is_int8_where_the_kernel_exists(tiny_model_dir):
    if not quantize.int8_supported():
        pytest.skip("this torch build has no fbgemm/x86 int8 kernel")
    assert load_model(tiny_model_dir, precision="auto").precision == "int8"


def unpacked_copy(layer: quantize.Int8Linear) -> quantize.Int8Linear:
    """The same weights in a layer of their own, not packed yet."""
    return quantize.Int8Linear(
        layer.int8_weight(),
        layer.scale,
        layer.bias,
        outliers=layer.outliers,
        outlier_weight=layer.outlier_weight,
        exact_prompts=layer.exact_prompts,
    )


def test_packing_on_the_packing_thread_gives_every_layer_what_packing_at_first_use_gives(
    tiny_model_dir, monkeypatch
):
    pack_all = quantize.prepack_all
    monkeypatch.setattr(
        quantize, "prepack_all", lambda model: None
    )  # the loader leaves the layers unpacked
    model = load_model(tiny_model_dir, precision="int8", native=True).model
    layers = [m for m in model.modules() if type(m) is quantize.Int8Linear]
    assert layers and not any(layer.is_packed for layer in layers)
    pack_all(model).join()
    assert quantize.packing_done()
    for layer in layers:
        assert layer.is_packed
        x = torch.randn(1, layer.in_features)  # one row: the packed kernel's path
        alone = unpacked_copy(layer)
        assert torch.equal(alone.row(x), layer.row(x))  # packed at first use, on this thread
        assert alone.is_packed


def test_the_row_kernel_computes_what_fbgemms_operator_computes():
    """The int8 kernel is called boxed through the dispatcher (no per-call __torch_function__
    lookup on the packed weight); it must compute exactly what `torch.ops` computes (the layer
    adds its bias after the kernel)."""
    torch.manual_seed(0)
    layer = quantize.Int8Linear.from_linear(torch.nn.Linear(40, 24))
    layer.kernel = "row-by-row"
    (packed,) = layer.prepack()  # one block: fewer than PACK_BLOCK_ROWS outputs
    for rows in (torch.randn(1, 40), torch.randn(1, 40) * 300.0):
        with torch.no_grad():
            guarded = torch.nn.functional.pad(rows, (0, len(quantize.GUARD)))  # zeros: no guard
            expected = torch.ops.quantized.linear_dynamic(guarded, packed, False) + layer.bias
            assert torch.equal(layer.row(rows), expected)
            assert torch.equal(layer(rows), expected)


def test_packing_in_the_background_races_decode_steps_without_changing_a_number(
    tiny_model_dir, monkeypatch
):
    """The packer goes front to back while decode steps go back to front: they meet midway, each
    layer is packed exactly once (by whichever thread reaches it first), and the numbers are
    those of packing on one thread."""
    import threading
    import time

    pack_all = quantize.prepack_all
    monkeypatch.setattr(quantize, "prepack_all", lambda model: None)
    model = load_model(tiny_model_dir, precision="int8", native=True).model
    layers = [m for m in model.modules() if type(m) is quantize.Int8Linear]
    rows = [torch.randn(1, layer.in_features) for layer in layers]
    with torch.no_grad():
        expected = [
            unpacked_copy(layer).row(x) for layer, x in zip(layers, rows, strict=True)
        ]  # packed here, one at a time
    assert not any(layer.is_packed for layer in layers)

    real_pack = quantize.Int8Linear.pack_weight
    packed_by: dict[int, list[str]] = {}
    packer_started = threading.Event()

    def slow_pack(layer):
        packed_by.setdefault(id(layer), []).append(threading.current_thread().name)
        if threading.current_thread() is not threading.main_thread():
            packer_started.set()
        time.sleep(0.02)  # long enough for the two threads to overlap
        return real_pack(layer)

    monkeypatch.setattr(quantize.Int8Linear, "pack_weight", slow_pack)
    thread = pack_all(model)
    assert thread is not None and packer_started.wait(30)
    with torch.no_grad():
        for layer, x, want in reversed(list(zip(layers, rows, expected, strict=True))):
            assert torch.equal(layer.row(x), want)
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert sorted(packed_by) == sorted(id(layer) for layer in layers)
    assert all(len(names) == 1 for names in packed_by.values())  # never packed twice
    packers = {names[0] for names in packed_by.values()}
    assert packers == {
        thread.name,
        threading.main_thread().name,
    }  # both did some: they really raced


def test_a_process_that_ends_while_packing_in_the_background_exits_cleanly(tmp_path):
    """Ending mid-pack used to abort the process (a C++ call still running at interpreter teardown)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "leave.py"
    script.write_text(
        "import torch\n"
        "from persona.model import quantize\n"
        "layers = [quantize.Int8Linear.from_linear(torch.nn.Linear(1024, 1024)) for _ in range(48)]\n"
        "quantize.prepack_all(torch.nn.Sequential(*layers))\n"
        "print('leaving', flush=True)\n",
        encoding="utf-8",
    )
    root = Path(__file__).resolve().parent.parent  # this checkout's persona, whatever is installed
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-500:]
    assert "leaving" in done.stdout and "terminate" not in done.stderr


def test_outlier_channels_are_multiplied_beside_the_int8_product():
    """One channel far larger than the rest (a massive activation): kept out of the int8 product,
    it no longer coarsens the other channels, and a row still computes the same in any batch."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 300, bias=False)
    rows = torch.randn(5, 64)
    rows[:, 7] = 40.0 + torch.rand(5)  # every position lights up channel 7
    plain = quantize.Int8Linear.from_linear(linear)
    split = quantize.Int8Linear.from_linear(linear, outliers=torch.tensor([7]))
    with torch.no_grad():
        exact = linear(rows)
        plain_error = (plain.row(rows) - exact).abs().max()
        split_error = (split.row(rows) - exact).abs().max()
        together = split.row(rows)
        assert all(torch.equal(together[i : i + 1], split.row(rows[i : i + 1])) for i in range(5))
        assert torch.allclose(split.weight, linear.weight, atol=float(split.scale.max()))
        assert torch.equal(split.weight[:, 7], linear.weight[:, 7])  # the outlier column exact
    assert float(split_error) < float(plain_error) / 4


def test_the_head_outliers_are_the_channels_the_model_lights_up(tiny_model_dir):
    model = load_model(tiny_model_dir, precision="fp32", native=True)
    head = model.model.lm_head
    seen = []
    head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    ids = model.tokenizer.encode(quantize.CALIBRATION_TEXT)
    found = quantize.head_outlier_channels(model.model, ids, count=3)
    largest = seen[-1].reshape(-1, head.in_features).abs().amax(dim=0)
    assert found.tolist() == sorted(largest.topk(3).indices.tolist())
    assert len(head._forward_pre_hooks) == 1  # the hook it used is gone, this test's stays


def test_a_kept_prompt_weight_computes_what_the_scratch_weight_does(tiny_model_dir):
    """A server keeps the float32 weights it encodes prompts with; the numbers do not change."""
    loaded = load_model(tiny_model_dir, precision="int8", native=True)
    ids = torch.tensor([[3, 4, 5, 9, 11, 2]])
    with torch.inference_mode(), quantize.exact_activations():
        before = loaded.model(input_ids=ids, logits_to_keep=0).logits
    kept = quantize.keep_prompt_weights(loaded.model)
    layers = [m for m in loaded.model.modules() if type(m) is quantize.Int8Linear]
    assert kept == sum(4 * m.weight_int8.numel() for m in layers if m.exact_prompts) > 0
    with torch.inference_mode(), quantize.exact_activations():
        after = loaded.model(input_ids=ids, logits_to_keep=0).logits
    assert torch.equal(before, after)
    assert quantize.keep_prompt_weights(torch.nn.Linear(2, 2)) == 0


def test_the_head_lets_its_unpacked_weight_go_once_packed_and_still_reads_the_same():
    torch.manual_seed(0)
    linear = torch.nn.Linear(40, 300, bias=False)
    head = quantize.Int8Linear.from_linear(linear, outliers=torch.tensor([3]), exact_prompts=False)
    layer = quantize.Int8Linear.from_linear(linear)
    int8, weight = head.int8_weight().clone(), head.weight
    head.prepack()
    layer.prepack()
    assert head.weight_int8 is None and layer.weight_int8 is not None  # a decoder layer keeps it
    assert torch.equal(head.int8_weight(), int8)
    assert torch.equal(head.weight, weight)
    rows = torch.randn(3, 40)
    with torch.no_grad():
        exact = linear(rows)
        assert float((head.row(rows) - exact).abs().max() / exact.abs().max()) < 0.05


def test_a_layer_wider_than_a_pack_block_computes_what_one_block_would(monkeypatch):
    """The output projection is packed in blocks of output channels (a lower peak while packing);
    the kernel runs once per block, and the numbers are those of one block."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(40, 300)
    rows = torch.randn(5, 40)
    whole = quantize.Int8Linear.from_linear(linear, outliers=torch.tensor([2]), exact_prompts=False)
    expected = whole.row(rows)
    monkeypatch.setattr(quantize, "PACK_BLOCK_ROWS", 128)
    blocked = quantize.Int8Linear.from_linear(
        linear, outliers=torch.tensor([2]), exact_prompts=False
    )
    assert len(blocked.prepack()) == 3
    assert torch.equal(blocked.row(rows), expected)
    assert torch.equal(blocked.int8_weight(), whole.int8_weight())
