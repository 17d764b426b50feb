"""Our labelled-positions-only loss is PEFT's prompt-tuning loss: same value, same gradient."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from persona.dialogue.encode import EncodedExample
from persona.prompt.inject import IGNORE_INDEX
from persona.train.batching import collate
from persona.train.loss import labelled_nll


def batch_for(tokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    texts = [
        ("Who are you?", "I am not only witty in myself."),
        ("Hello there!", "To be, or not to be, that is the question."),
    ]
    examples = []
    for prefix, reply in texts:
        prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
        examples.append(
            EncodedExample(prefix_ids + reply_ids, [IGNORE_INDEX] * len(prefix_ids) + reply_ids)
        )
    return collate(examples, pad_id=tokenizer.pad_token_id)  # (B, T) each, right-padded


def test_loss_and_gradient_match_peft_prompt_tuning(tiny_model_dir, tiny) -> None:
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    ids, mask, labels = batch_for(tiny.tokenizer)
    assert (mask == 0).any(), "the batch must contain padding for this test to mean something"
    prompt = torch.nn.Parameter(
        torch.randn(5, tiny.fingerprint.hidden_size, generator=torch.Generator().manual_seed(2))
    )

    total, count = labelled_nll(tiny.model, prompt, ids, mask, labels)
    ours = total / count
    ours.backward()

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = get_peft_model(
        base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)
    )
    embedding = peft_model.prompt_encoder["default"].embedding.weight  # (N, D)
    with torch.no_grad():
        embedding.copy_(prompt.detach())
    reference = peft_model(input_ids=ids, attention_mask=mask, labels=labels).loss
    reference.backward()

    assert count == int(
        (labels != IGNORE_INDEX).sum()
    )  # every reply token is scored, padding never
    assert ours.item() == pytest.approx(reference.item(), abs=1e-5)
    torch.testing.assert_close(prompt.grad, embedding.grad, atol=1e-5, rtol=1e-4)


def test_without_a_prompt_it_is_the_models_own_loss(tiny) -> None:
    ids, mask, labels = batch_for(tiny.tokenizer)
    total, count = labelled_nll(tiny.model, None, ids, mask, labels)
    with torch.no_grad():
        reference = tiny.model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert (total / count).item() == pytest.approx(reference.item(), abs=1e-5)


def test_the_prompt_runs_once_per_batch_and_gives_what_every_row_running_it_gives(tiny) -> None:
    """The shared prompt (a batch of one, its keys and values repeated for each row) is an exact
    rewrite: value and gradient equal the plain [P ; ids] pass, padding and a label on the very
    first token (predicted from the prompt's last position) included."""
    generator = torch.Generator().manual_seed(3)
    vocab = len(tiny.tokenizer)
    examples = []
    for length, first_reply in ((9, 0), (14, 5), (6, 2), (11, 7)):
        ids = torch.randint(3, vocab, (length,), generator=generator).tolist()
        examples.append(EncodedExample(ids, [IGNORE_INDEX] * first_reply + ids[first_reply:]))
    ids, mask, labels = collate(examples, pad_id=0)  # (4, 14) right-padded
    assert (mask == 0).any() and labels[0, 0] != IGNORE_INDEX
    start = torch.randn(6, tiny.fingerprint.hidden_size, generator=generator)

    decoder = tiny.model.model
    batch_sizes: list[tuple[int, int]] = []
    hook = decoder.register_forward_pre_hook(
        lambda _m, _a, kw: batch_sizes.append(tuple(kw["inputs_embeds"].shape[:2])),
        with_kwargs=True,
    )
    results = {}
    try:
        for share in (True, False):
            batch_sizes.clear()
            prompt = torch.nn.Parameter(start.clone())
            total, count = labelled_nll(tiny.model, prompt, ids, mask, labels, share_prompt=share)
            (total / count).backward()
            results[share] = (total.detach(), count, prompt.grad, list(batch_sizes))
    finally:
        hook.remove()
    assert results[True][3] == [(1, 6), (4, 14)]  # the prompt once, then the rows' own tokens
    assert results[False][3] == [(4, 20)]
    assert results[True][1] == results[False][1] == int((labels != IGNORE_INDEX).sum())
    torch.testing.assert_close(results[True][0], results[False][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[True][2], results[False][2], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("layer_type", ["sliding_attention", "linear_attention"])
def test_models_whose_cache_is_not_plain_keys_and_values_cannot_share_the_prompt(
    tiny, layer_type
) -> None:
    """Hybrid models (recurrent or convolutional state) and windowed attention cannot share the
    prompt through a repeated cache."""
    import copy

    from persona.train import loss

    plain = copy.deepcopy(tiny.model.config)
    assert (
        loss.shareable_cache(SimpleNamespace(config=plain)) is not None
    )  # the tiny Llama shares it
    hybrid = copy.deepcopy(tiny.model.config)
    hybrid.layer_types = ["full_attention", layer_type]
    hybrid.sliding_window = 4
    assert loss.shareable_cache(SimpleNamespace(config=hybrid)) is None


def test_a_model_that_cannot_share_the_prompt_trains_on_the_plain_pass(tiny, monkeypatch) -> None:
    from persona.train import loss

    ids, mask, labels = batch_for(tiny.tokenizer)
    prompt = torch.randn(
        5, tiny.fingerprint.hidden_size, generator=torch.Generator().manual_seed(4)
    )
    shapes: list[tuple[int, int]] = []
    hook = tiny.model.model.register_forward_pre_hook(
        lambda _m, _a, kw: shapes.append(tuple(kw["inputs_embeds"].shape[:2])), with_kwargs=True
    )
    monkeypatch.setattr(loss, "shareable_cache", lambda decoder: None)  # as for such a model
    try:
        with torch.no_grad():
            _, count = labelled_nll(tiny.model, prompt, ids, mask, labels)
    finally:
        hook.remove()
    assert shapes == [(2, ids.shape[1] + 5)]  # one plain pass, no batch-of-one prompt pass
    assert count == int((labels != IGNORE_INDEX).sum())


def test_the_vocabulary_projection_in_blocks_gives_the_same_losses_and_gradient(
    tiny, monkeypatch
) -> None:
    import persona.train.loss as loss

    ids, mask, labels = batch_for(tiny.tokenizer)
    count = int((labels != IGNORE_INDEX).sum())
    results = []
    for rows in (loss.HEAD_ROWS, 3):  # one block for this batch, then blocks of 3 positions
        monkeypatch.setattr(loss, "HEAD_ROWS", rows)
        prompt = torch.nn.Parameter(
            torch.randn(5, tiny.fingerprint.hidden_size, generator=torch.Generator().manual_seed(2))
        )
        losses, wanted = loss.labelled_losses(tiny.model, prompt, ids, mask, labels)
        (losses.sum() / count).backward()
        results.append((losses.detach(), prompt.grad))
        assert losses.shape == (count,) and int(wanted.sum()) == count > 3
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-6, rtol=1e-5)


def test_a_batch_without_targets_has_no_losses(tiny) -> None:
    from persona.train.loss import labelled_losses

    ids, mask, labels = batch_for(tiny.tokenizer)
    losses, wanted = labelled_losses(
        tiny.model, None, ids, mask, torch.full_like(labels, IGNORE_INDEX)
    )
    assert losses.shape == (0,) and not wanted.any()
