"""`persona train` under `accelerate launch` with 2 CPU processes (gloo): each takes half of every
batch, yet the trained prompt is the one a single process trains, and an interrupted 2-process run
resumes to that prompt too. Each test launches real processes (tens of seconds on 2 cores)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from persona.dialogue.sources import read_source
from persona.library import open_library
from persona.prompt.softprompt import SoftPrompt
from persona.train import TrainConfig
from persona.train.checkpoint import checkpoint_path, load_checkpoint
from persona.train.run import train_persona
from tests.helpers import write_log

STOP_AFTER = Path(__file__).parent / "train_stop_after.py"
SETTINGS = {"num_virtual_tokens": 4, "lr": 0.05, "seed": 7, "validation_fraction": 0.2}


def launch(tmp_path: Path, *command: str) -> subprocess.CompletedProcess:
    """accelerate launch with 2 processes on the CPU (torchrun; gloo), as a user would run it."""
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),  # no accelerate config of the machine's applies
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
        + ["--main_process_port", "0", "--num_machines", "1", "--mixed_precision", "no"]
        + ["--dynamo_backend", "no", *command],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def train_args(log: Path, model: Path, name: str, steps: int, batch_size: int) -> list[str]:
    return [
        "train",
        str(log),
        "--speaker",
        "BOB",
        "--name",
        name,
        "--model",
        str(model),
        "--virtual-tokens",
        str(SETTINGS["num_virtual_tokens"]),
        "--lr",
        str(SETTINGS["lr"]),
        "--seed",
        str(SETTINGS["seed"]),
        "--validation-fraction",
        str(SETTINGS["validation_fraction"]),
        "--steps",
        str(steps),
        "--batch-size",
        str(batch_size),
        "--style-sample",
        "none",
        "--device",
        "cpu",
        "--quiet",
    ]


def single_process(tiny, log: Path, steps: int, batch_size: int) -> torch.Tensor:
    """The prompt one process trains with the same global batch, steps and seed."""
    config = TrainConfig(steps=steps, batch_size=batch_size, **SETTINGS)
    trained = train_persona(
        tiny, read_source(str(log)), speaker="BOB", name="single", config=config, progress=False
    )
    return trained.prompt.embeddings  # (N, D)


def test_two_processes_train_the_prompt_one_process_trains(tmp_path, tiny, tiny_model_dir) -> None:
    log = write_log(tmp_path)
    output = tmp_path / "two.safetensors"
    args = train_args(log, tiny_model_dir, "bob", steps=8, batch_size=4)
    result = launch(tmp_path, "-m", "persona", *args, "--output", str(output))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("stored persona 'bob' version 1") == 1  # rank 0 alone stores

    torch.testing.assert_close(
        SoftPrompt.load(output).embeddings,
        single_process(tiny, log, steps=8, batch_size=4),
        atol=1e-5,
        rtol=0,
    )
    library = open_library()
    try:
        versions = library.get_persona("bob").versions
    finally:
        library.close()
    assert len(versions) == 1 and versions[0].training["steps"] == 8
    assert not checkpoint_path("bob").exists()


def test_an_interrupted_two_process_run_resumes_to_the_same_prompt(
    tmp_path, tiny, tiny_model_dir
) -> None:
    log = write_log(tmp_path)
    # 18 training examples in batches of 17: every epoch's second batch holds one example, which
    # leaves rank 1 with nothing to run on that step (its gradient counts as zero)
    args = train_args(log, tiny_model_dir, "bob", steps=6, batch_size=17)
    stopped = launch(tmp_path, str(STOP_AFTER), "3", *args)
    assert stopped.returncode != 0
    assert stopped.stderr.count("training stopped after step 3/6") == 1  # from rank 0 alone
    assert load_checkpoint(checkpoint_path("bob")).step == 3

    output = tmp_path / "resumed.safetensors"
    resumed = launch(tmp_path, "-m", "persona", *args, "--resume", "--output", str(output))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    torch.testing.assert_close(
        SoftPrompt.load(output).embeddings,
        single_process(tiny, log, steps=6, batch_size=17),
        atol=1e-5,
        rtol=0,
    )
