"""`persona reply` on the real embedded default model, through the installed command."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def persona(*args: str, home) -> subprocess.CompletedProcess:
    env = {**os.environ, "PERSONA_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "persona.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_greedy_reply_knows_paris_and_is_repeatable(real_home):
    first = persona(
        "reply",
        "--no-persona",
        "--temperature",
        "0",
        "--json",
        "What is the capital of France?",
        home=real_home,
    )
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert "Paris" in result["reply"]
    assert result["persona"] is None and result["tokens"] > 0
    assert result["prompt"].endswith("<|im_start|>assistant\n")
    assert result["model"].startswith("LlamaForCausalLM/d576/v49152/")
    second = persona(
        "reply",
        "--no-persona",
        "--temperature",
        "0",
        "--json",
        "What is the capital of France?",
        home=real_home,
    )
    assert json.loads(second.stdout)["reply"] == result["reply"]


def test_plain_output_streams_the_reply(real_home):
    done = persona(
        "reply",
        "--no-persona",
        "--temperature",
        "0",
        "--max-tokens",
        "20",
        "Say hello.",
        home=real_home,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_soft_prompt_file_for_another_model_is_refused_in_one_line(
    real_home, tiny_prompt, tmp_path
):
    path = tiny_prompt.save(tmp_path / "tiny.safetensors")
    done = persona("reply", "--persona", str(path), "hello", home=real_home)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "width" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--model", "/no/such/model", "hi"], "does not exist"),
        (["--no-persona", ""], "empty"),
    ],
)
def test_bad_input_is_one_line(real_home, args, expected):
    done = persona("reply", *args, home=real_home)
    assert done.returncode == 1 and expected in done.stderr and "Traceback" not in done.stderr
