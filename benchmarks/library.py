"""Library speed at scale: a library of 10,000 personas, `persona list` and opening one for chat.

    python benchmarks/library.py [--personas 10000] [--tokens 20] [--width 576] [--runs 5]

Builds a throwaway library (20 x 576 float32 prompts, SmolLM2-135M's width: about 46 KB each),
then times, each in a fresh process as a user would meet it (median of --runs):
  1. `persona list` (and `--json`), end to end, interpreter start included;
  2. `persona show NAME`;
  3. opening a persona for chat, in a process that has already imported torch (the chat has
     loaded its model by then): cold (SQLAlchemy import + `open_library()` + `get_prompt()`),
     without the import, and switching persona (`get_prompt()` on the open library).
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
import torch  # the chat has loaded its model (torch, transformers) before it opens a persona
start = time.perf_counter()
from persona.library import open_library, PersonaLibrary  # SQLAlchemy: most of the cold cost
imported = time.perf_counter()
lib = open_library(sys.argv[1])
prompt = lib.get_prompt(sys.argv[2])
opened = time.perf_counter()
lib.get_prompt(sys.argv[3])  # switching persona in a running chat
switched = time.perf_counter()
assert prompt.embeddings.shape == (int(sys.argv[4]), int(sys.argv[5]))
print(opened - start, opened - imported, switched - opened)
"""


def open_for_chat(path: Path, names: tuple[str, str], tokens: int, width: int, runs: int) -> tuple[float, float, float]:
    """(cold: import + open + get_prompt, open + get_prompt with modules imported, a later get_prompt)."""
    samples = []
    for _ in range(runs):
        result = subprocess.run([sys.executable, "-c", OPEN_FOR_CHAT, str(path), *names, str(tokens), str(width)],
                                check=True, capture_output=True, text=True)
        samples.append([float(x) for x in result.stdout.split()])
    cold, warm, switch = (statistics.median(column) for column in zip(*samples, strict=True))
    return cold, warm, switch


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
        }
        cold, warm, switch = open_for_chat(path, (middle, "persona-00001"), args.tokens, args.width, args.runs)
        results["open for chat, cold (import SQLAlchemy + open + get_prompt)"] = cold
        results["open for chat (open_library + get_prompt)"] = warm
        results["switch persona (get_prompt, library open)"] = switch
    print(f"{'what':<62} {'median s':>9}  target {TARGET_S} s")
    for what, seconds in results.items():
        print(f"{what:<62} {seconds:>9.3f}  {'ok' if seconds < TARGET_S else 'OVER'}")


if __name__ == "__main__":
    main()
