"""Helpers several test modules share: a dialogue log the tiny model learns fast, the arguments of a
short `persona train`, and running the command line in-process."""

from __future__ import annotations

from pathlib import Path

from persona.cli.main import main
from persona.dialogue import Conversation, Dialogue, Turn

REPLIES = ["To be, or not to be, that is the question.", "I am not only witty in myself."]


def bard_dialogue(conversations: int = 12) -> Dialogue:
    """ALICE asks, BOB always answers in one of two fixed lines: easy to learn, even for the tiny model."""
    convs = [
        Conversation(
            [
                Turn("ALICE", f"Hello there! How are you today? {i}"),
                Turn("BOB", REPLIES[i % 2]),
                Turn("ALICE", "What is the capital of France?"),
                Turn("BOB", REPLIES[(i + 1) % 2]),
            ]
        )
        for i in range(conversations)
    ]
    return Dialogue(convs, source="bard.txt", sha256="ab" * 32)


def write_log(tmp_path: Path, conversations: int = 12) -> Path:
    """`bard_dialogue` as a transcript file, bard.txt in `tmp_path`."""
    blocks = [
        f"ALICE: Hello there! How are you today? {i}\nBOB: {REPLIES[i % 2]}\nALICE: What is the capital of France?\nBOB: {REPLIES[(i + 1) % 2]}\n"
        for i in range(conversations)
    ]
    path = tmp_path / "bard.txt"
    path.write_text("\n".join(blocks), encoding="utf-8")
    return path


def train_args(log: Path, model: Path, *extra: str) -> list[str]:
    """`persona train` of BOB on `log`: a tiny prompt, three steps, no progress bar, no style measure."""
    return [
        "train",
        str(log),
        "--speaker",
        "bob",
        "--name",
        "bob",
        "--model",
        str(model),
        "--virtual-tokens",
        "4",
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--quiet",
        "--style-sample",
        "none",  # the style measure has tests of its own (tests/test_style_cli.py)
        *extra,
    ]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """`persona ARGV...` in-process: (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 1
    assert err.startswith("persona: error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err
