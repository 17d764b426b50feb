"""SIGKILL `persona train` and `persona import` at random moments: the library never holds half a persona.

After every kill the library passes `PRAGMA integrity_check`, opens, and `persona doctor` finds
nothing wrong (no persona without a usable version, no version whose tensor misses its checksum, no
orphan rows); a killed training run resumes from its last checkpoint with `--resume`.

The commands run in children forked from a zygote that imported torch once (see `zygote`), so forty
kills cost seconds each rather than a torch import each; a child is a real `persona` process.
Delays are drawn from a seeded generator: PERSONA_CRASH_SEED picks another set of moments.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

KILLS = int(os.environ.get("PERSONA_CRASH_KILLS", "20"))
SEED = int(os.environ.get("PERSONA_CRASH_SEED", "8"))
REPO = Path(__file__).resolve().parent.parent


class Zygote:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.test_crash_safety"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._read() == {"ready": True}

    def _read(self) -> dict[str, Any]:
        line = self.process.stdout.readline()  # type: ignore[union-attr]
        assert line, "the zygote died"
        return json.loads(line)

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        self.process.stdin.write(json.dumps(request) + "\n")  # type: ignore[union-attr]
        self.process.stdin.flush()  # type: ignore[union-attr]
        return self._read()

    def run(
        self, argv: list[str], output: Path, kill_after: float | None, *, once: str = ""
    ) -> tuple[bool, int | None, str]:
        """Run `persona ARGV`; SIGKILL it `kill_after` s after it starts (or after `once` shows in its output).

        Returns (killed while running, exit code or None when killed, what it printed).
        """
        pid = self._ask({"run": argv, "output": str(output)})["pid"]
        if kill_after is not None:
            while once and once not in _text(output) and _running(pid):
                time.sleep(0.01)
            time.sleep(kill_after)
            os.kill(pid, signal.SIGKILL)
        answer = self._ask({"wait": pid})
        return (
            answer["killed"],
            answer["code"],
            _text(output),
        )  # a child killed at once never made its file

    def close(self) -> None:
        self.process.stdin.close()  # type: ignore[union-attr]
        self.process.wait(timeout=30)


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _running(pid: int) -> bool:
    """Still running (not yet a zombie waiting for the zygote to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] not in ("Z", "X")
    except OSError:
        return False


@pytest.fixture
def zygote():
    started = Zygote()
    yield started
    started.close()


def assert_library_whole(path: Path) -> None:
    """What a user would check after a crash: the file is sound, opens, and nothing in it is half-made."""
    if not path.exists():
        return
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        connection.close()
    from persona.doctor import check_library
    from persona.library import open_library

    lib = open_library(path)
    try:
        for info in lib.list_personas():
            assert info.active_version >= 1
            for version in lib.get_persona(info.name).versions:
                assert (
                    lib.get_prompt(info.name, version.version).num_virtual_tokens > 0
                )  # checksum-verified
    finally:
        lib.close()
    assert check_library(path) == []


def write_log(folder: Path) -> Path:
    blocks = [
        f"ALICE: Hello there {i}! How are you?\nBOB: To be, or not to be.\nALICE: What is the capital?\nBOB: Paris, {i}.\n"
        for i in range(12)
    ]
    path = folder / "bard.txt"
    path.write_text("\n".join(blocks), encoding="utf-8")
    return path


def checkpoint_step(home: Path) -> int | None:
    from persona.train.checkpoint import load_checkpoint

    found = (
        sorted((home / "checkpoints").glob("bob-*.safetensors"))
        if (home / "checkpoints").is_dir()
        else []
    )
    return load_checkpoint(found[0]).step if found else None


TOTAL_STEPS = 24  # checkpoints at steps 6, 12 and 18


def test_killing_training_at_random_moments_never_leaves_half_a_persona(
    zygote, tmp_path, tiny_model_dir, isolated_home
) -> None:
    log = write_log(tmp_path)
    library = isolated_home / "library.db"
    train = [
        "train",
        str(log),
        "--speaker",
        "bob",
        "--name",
        "bob",
        "--model",
        str(tiny_model_dir),
        "--virtual-tokens",
        "4",
        "--steps",
        str(TOTAL_STEPS),
        "--batch-size",
        "4",
        "--seed",
        "0",
        "--style-sample",
        "none",
    ]
    began = time.perf_counter()  # a first, unkilled run measures how long a whole run takes here
    killed, code, out = zygote.run(
        [*train[:5], "calibrate", *train[6:]], tmp_path / "calibrate.txt", None
    )
    whole = time.perf_counter() - began
    assert code == 0, out
    rate = re.findall(r"([\d.]+)step/s", out)
    slow = re.findall(r"([\d.]+)s/step", out)  # tqdm's form below one step a second
    per_step = 1 / float(rate[-1]) if rate else float(slow[-1]) if slow else None
    training = TOTAL_STEPS * per_step if per_step else whole / 4  # seconds the optimisation takes
    generator = random.Random(SEED)
    landed = resumed = 0
    for kill in range(KILLS):
        step = checkpoint_step(isolated_home)
        argv = [*train, "--resume"] if step is not None else train
        if kill % 2:  # any moment of the run: loading, training, evaluating, storing
            _, code, out = zygote.run(
                argv, tmp_path / f"train-{kill}.txt", generator.uniform(0.0, whole)
            )
        else:  # a moment of the optimisation itself, which is short on the tiny model
            _, code, out = zygote.run(
                argv,
                tmp_path / f"train-{kill}.txt",
                generator.uniform(0.0, training),
                once="training bob",
            )
        landed += code is None
        resumed += step is not None
        first = re.search(rf"(\d+)/{TOTAL_STEPS}", out) if step is not None else None
        if first is not None:  # the bar was drawn before the kill: it starts at the checkpoint
            assert int(first.group(1)) == step, (
                f"kill {kill}: --resume started at {first.group(1)}, not at step {step}"
            )
        assert_library_whole(library)
        if code == 0:  # the run finished before the kill: a whole persona, the checkpoint gone
            assert checkpoint_step(isolated_home) is None
        else:
            assert code is None, out
    step = checkpoint_step(isolated_home)
    argv = [*train, "--resume"] if step is not None else train
    _, code, out = zygote.run(argv, tmp_path / "final.txt", None)
    assert code == 0, out
    if step is not None:  # the progress bar starts where the checkpoint left off
        first = re.search(rf"(\d+)/{TOTAL_STEPS}", out)
        assert first is not None and int(first.group(1)) == step, out[:400]
    assert_library_whole(library)
    print(
        f"\ntraining: {KILLS} SIGKILLs, {landed} while running, {resumed} runs resumed a checkpoint, library whole after each"
    )
    assert landed >= KILLS // 2, "most kills must land while the command runs"
    assert resumed >= 1, "no kill left a checkpoint to resume"


def test_killing_import_at_random_moments_never_leaves_half_a_persona(
    zygote, tmp_path, isolated_home
) -> None:
    from persona.library import open_library
    from tests.library_helpers import make_prompt

    library = isolated_home / "library.db"
    open_library(library).close()
    files = []
    for index in range(KILLS + 1):
        path = tmp_path / f"voice{index}.safetensors"
        make_prompt(seed=index, tokens=200).save(
            path
        )  # 200 x 32 floats: a write large enough to be caught midway
        files.append(path)
    began = time.perf_counter()
    _, code, out = zygote.run(
        ["import", str(files[-1]), "--name", "calibrate"], tmp_path / "calibrate.txt", None
    )
    whole = time.perf_counter() - began
    assert code == 0, out
    generator = random.Random(SEED)
    landed = stored = 0
    for kill in range(KILLS):
        _, code, out = zygote.run(
            ["import", str(files[kill]), "--name", f"voice{kill}"],
            tmp_path / f"import-{kill}.txt",
            generator.uniform(0.0, 1.3 * whole),
        )
        landed += code is None
        assert code in (None, 0), out
        assert_library_whole(library)
        lib = open_library(library)
        try:
            if lib.has_persona(f"voice{kill}"):  # all of it, or none of it
                stored += 1
                assert (
                    lib.get_prompt(f"voice{kill}").sha256
                    == make_prompt(seed=kill, tokens=200).sha256
                )
                assert [v.version for v in lib.get_persona(f"voice{kill}").versions] == [1]
        finally:
            lib.close()
    print(
        f"\nimport: {KILLS} SIGKILLs, {landed} while running, {stored} imports complete before the kill, library whole after each"
    )
    assert landed >= KILLS // 4, "a good share of the kills must land while the command runs"


def zygote_main() -> None:
    """The zygote: import everything heavy once, then fork one `persona` command per request."""
    import torch

    torch.set_num_threads(1)  # no OpenMP pool exists before the fork; the machine is shared
    import transformers  # noqa: F401
    from alembic import command  # noqa: F401
    from sqlalchemy.orm import Session  # noqa: F401

    import persona.cli.main
    import persona.formats.kobold  # noqa: F401
    import persona.formats.peft  # noqa: F401
    import persona.library.library  # noqa: F401
    import persona.train.run  # noqa: F401

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if "run" in request:
            pid = os.fork()
            if pid == 0:
                _child(persona.cli.main.main, request["run"], request["output"])
            print(json.dumps({"pid": pid}), flush=True)
        else:
            _, status = os.waitpid(request["wait"], 0)
            killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            print(
                json.dumps(
                    {
                        "killed": killed,
                        "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                    }
                ),
                flush=True,
            )


def _child(run: Any, argv: list[str], output: str) -> None:
    code = 99
    try:
        descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(descriptor, 1)
        os.dup2(descriptor, 2)
        code = run(argv)
    except BaseException as exc:  # noqa: BLE001 - report anything, then leave without the parent's cleanup
        print(f"crash: {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    zygote_main()
