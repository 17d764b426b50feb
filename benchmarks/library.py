"""Library speed at scale: a library of 10,000 personas, `persona list` and opening one for chat.

    python benchmarks/library.py [--personas 10000] [--tokens 20] [--width 576] [--runs 5]

Builds a throwaway library (20 x 576 float32 prompts, SmolLM2-135M's width: about 46 KB each),
then times, each in a fresh process as a user would meet it (median of --runs):
  1. `persona list` (and `--json`), end to end, interpreter start included;
  2. `persona show NAME`;
  3. opening a persona for chat: `open_library()` + `get_prompt(name)` in a process that has
     already imported torch (the chat has loaded its model by then); SQLAlchemy import included.
Target for each: under 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 0.5


def build(path: Path, personas: int, tokens: int, width: int) -> None:
    """Fill the library in one transaction through the ORM (add_version would commit 10,000 times)."""
    import torch

    from persona.library import open_library
    from persona.library.models import Persona, PersonaTag, PromptTensor, PromptVersion, utcnow
    from persona.prompt.softprompt import SoftPrompt

    lib = open_library(path)
    metrics = json.dumps({"nll": {"no_prompt": 3.4, "hard_prompt": 3.0, "soft_prompt": 2.6}, "tokens": 5000, "examples": 120})
    generator = torch.Generator().manual_seed(0)
    with lib.writing() as session:
        for index in range(personas):
            prompt = SoftPrompt(torch.randn(tokens, width, generator=generator), name=f"persona-{index:05d}")  # (N, D)
            now = utcnow()
            persona = Persona(name=prompt.name, description=f"benchmark voice number {index}", active_version=1,
                              created=now, updated=now)
            session.add(persona)
            session.flush()
            session.add(PromptVersion(
                persona_id=persona.id, version=1, tensor=PromptTensor(data=prompt.to_bytes()), num_virtual_tokens=tokens, hidden_size=width,
                dtype="float32", sha256=prompt.sha256, model_id="SmolLM2-135M-Instruct", fingerprint="", fingerprint_json="",
                init="random", training_json=None, metrics_json=metrics, created=now,
            ))
            session.add(PersonaTag(persona_id=persona.id, tag=f"group-{index % 10}"))
    lib.close()


def timed(argv: list[str], runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


OPEN_FOR_CHAT = """
import sys, time
import torch  # already loaded by the chat (its model) before a persona is opened
start = time.perf_counter()
from persona.library import open_library
lib = open_library(sys.argv[1])
prompt = lib.get_prompt(sys.argv[2])
elapsed = time.perf_counter() - start
assert prompt.embeddings.shape == (int(sys.argv[3]), int(sys.argv[4]))
print(elapsed)
"""


def open_for_chat(path: Path, name: str, tokens: int, width: int, runs: int) -> float:
    samples = []
    for _ in range(runs):
        result = subprocess.run([sys.executable, "-c", OPEN_FOR_CHAT, str(path), name, str(tokens), str(width)],
                                check=True, capture_output=True, text=True)
        samples.append(float(result.stdout.strip().splitlines()[-1]))
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--personas", type=int, default=10_000)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--width", type=int, default=576)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="persona-bench-") as home:
        os.environ["PERSONA_HOME"] = home
        path = Path(home) / "library.db"
        start = time.perf_counter()
        build(path, args.personas, args.tokens, args.width)
        size_mb = sum(f.stat().st_size for f in Path(home).glob("library.db*")) / 1e6
        print(f"built {args.personas} personas ({args.tokens} x {args.width}) in {time.perf_counter() - start:.1f} s, "
              f"{size_mb:.0f} MB")
        persona = [sys.executable, "-m", "persona.cli.main"]
        middle = f"persona-{args.personas // 2:05d}"
        results = {
            "persona list": timed(persona + ["list", "--library", str(path)], args.runs),
            "persona list --json": timed(persona + ["list", "--json", "--library", str(path)], args.runs),
            f"persona show {middle}": timed(persona + ["show", middle, "--library", str(path)], args.runs),
            "open for chat (open_library + get_prompt)": open_for_chat(path, middle, args.tokens, args.width, args.runs),
        }
    print(f"{'what':<44} {'median s':>9}  target {TARGET_S} s")
    for what, seconds in results.items():
        print(f"{what:<44} {seconds:>9.3f}  {'ok' if seconds < TARGET_S else 'OVER'}")


if __name__ == "__main__":
    main()
