"""--device: a device that is not there is one line, and training keeps the prompt in float32 on the
model's device whatever dtype the weights have (bfloat16 on an accelerator; tried here on the CPU)."""

from __future__ import annotations

import copy

import pytest
import torch

from persona.cli.main import main
from persona.dialogue import encode_examples
from persona.errors import ConfigError
from persona.model.device import model_device, resolve_device
from persona.prompt.render import Renderer
from persona.train import TrainConfig
from persona.train.batching import collate, pad_token_id, reply_tokens
from persona.train.loop import train_loop
from persona.train.loss import labelled_nll
from persona.train.ranks import Ranks
from tests.helpers import bard_dialogue, train_args, write_log


def no_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_auto_falls_back_to_the_cpu_and_a_missing_device_is_named(monkeypatch) -> None:
    no_accelerator(monkeypatch)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"^--device cuda: torch sees no CUDA GPU here"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match=r"^--device mps: Apple's MPS backend is not available"):
        resolve_device("mps")
    with pytest.raises(
        ConfigError, match=r"--device must be one of auto, cpu, cuda, mps, got 'tpu'"
    ):
        resolve_device("tpu")


@pytest.mark.parametrize("command", ["train", "eval"])
def test_the_commands_say_in_one_line_that_the_device_is_not_there(
    command, tmp_path, tiny_model_dir, capsys, monkeypatch
) -> None:
    no_accelerator(monkeypatch)
    log = write_log(tmp_path)
    if command == "train":
        args = train_args(log, tiny_model_dir, "--device", "cuda")
    else:
        assert main(train_args(log, tiny_model_dir)) == 0
        args = ["eval", "bob", str(log), "--speaker", "bob", "--model", str(tiny_model_dir)]
        args += ["--device", "cuda"]
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device cuda: torch sees no CUDA GPU here" in err


def test_reply_tokens_is_the_count_the_loss_is_a_mean_over(tiny) -> None:
    renderer = Renderer(tiny.tokenizer)
    from persona.dialogue.examples import build_examples

    examples = encode_examples(renderer, build_examples(bard_dialogue(3), "BOB", 4), "bob")
    device = model_device(tiny.model)
    ids, mask, labels = (t.to(device) for t in collate(examples, pad_token_id(tiny.tokenizer)))
    prompt = torch.zeros(4, tiny.fingerprint.hidden_size, device=device)  # (4, D)
    _, count = labelled_nll(tiny.model, prompt, ids, mask, labels)
    assert reply_tokens(examples) == count


def test_bfloat16_weights_train_a_float32_prompt_on_the_models_device(tiny) -> None:
    model = copy.deepcopy(tiny.model).to(torch.bfloat16)
    renderer = Renderer(tiny.tokenizer)
    from persona.dialogue.examples import build_examples

    train = encode_examples(renderer, build_examples(bard_dialogue(), "BOB", 4), "bob")
    start = torch.randn(4, tiny.fingerprint.hidden_size, generator=torch.Generator().manual_seed(0))
    result = train_loop(
        model,
        start,  # (4, D) float32
        train,
        [],
        TrainConfig(num_virtual_tokens=4, steps=3, batch_size=4, lr=0.05),
        pad_id=pad_token_id(tiny.tokenizer),
        total_steps=3,
        progress=False,
        ranks=Ranks(device=model_device(model)),
    )
    assert result.prompt.dtype == torch.float32 and result.prompt.device.type == "cpu"
    assert not torch.equal(result.prompt, start)  # the gradient reached the float32 prompt
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
