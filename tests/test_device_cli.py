"""--device for chat, reply and serve: the CPU path works, a device that is not there is one line."""

from __future__ import annotations

import json

import pytest
import torch

from persona.cli.main import main


def reply(capsys, tiny_model_dir, *arguments: str) -> tuple[int, str, str]:
    code = main(["reply", "--model", str(tiny_model_dir), "--no-persona", "--local", *arguments])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_reply_on_the_cpu_by_name_and_by_auto(capsys, tiny_model_dir):
    common = ["--json", "--temperature", "0", "--max-tokens", "5", "hello"]
    code, out, _ = reply(capsys, tiny_model_dir, "--device", "cpu", *common)
    assert code == 0
    if not torch.cuda.is_available():  # auto is the CPU here: the same reply
        auto_code, auto_out, _ = reply(capsys, tiny_model_dir, *common)
        assert auto_code == 0 and json.loads(auto_out)["reply"] == json.loads(out)["reply"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_a_missing_gpu_is_one_line(capsys, tiny_model_dir):
    code, _, err = reply(capsys, tiny_model_dir, "--device", "cuda", "hello")
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "cuda" in lines[0] and "--device cpu" in lines[0]
    assert "Traceback" not in err
