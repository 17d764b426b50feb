"""Where longer training, a learning-rate schedule and more context stop paying, through the real CLI.

    python benchmarks/defaults.py [--spec personas/falstaff.toml] [--variants base steps120 ...]
                                  [--out defaults.json]

Each variant is one `persona train --spec SPEC` run with a few flags changed (the spec's held-out
text, evaluation sample and style sample as a user gets them), into a scratch library. Reported per
variant: held-out NLL of the persona with its 95% interval, the paired difference to the written
prompt, the style share with its interval, how often it names the character (of 3), and the
minutes the whole command took (training, evaluation and the style measure). Results go to --out
after every run; a rerun skips the variants that file holds. Run it alone, or with
OMP_NUM_THREADS=1 beside other work: the minutes are this machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS: dict[str, list[str]] = {  # name -> the flags added to the spec's own command
    "base": [],  # the spec as it is (the starters: 40 steps, about one epoch, constant rate)
    "cosine": ["--schedule", "cosine"],
    "steps120": ["--steps", "120"],
    "steps120-cosine": ["--steps", "120", "--schedule", "cosine"],
    "context4": ["--context-turns", "4"],
}


def run_variant(spec: Path, flags: list[str], scratch: Path) -> dict:
    """Train once through the CLI; the stored version's metrics and the command's minutes. The spec
    is copied to `scratch` first: the prompt file it names is written next to it, and the
    repository's own must stay as it is."""
    scratch.mkdir(parents=True)
    library = scratch / "library.db"
    spec = Path(shutil.copy(spec, scratch / spec.name))
    persona = [sys.executable, "-m", "persona"]
    command = [*persona, "train", "--spec", str(spec), "--library", str(library), "--quiet", *flags]
    began = time.perf_counter()
    env = {**os.environ, "PERSONA_NO_STARTERS": "1"}
    subprocess.run(command, check=True, env=env, cwd=ROOT)
    minutes = (time.perf_counter() - began) / 60
    name = spec.stem
    shown = subprocess.run(
        [*persona, "show", name, "--json", "--library", str(library)],
        check=True,
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    version = next(v for v in json.loads(shown.stdout)["versions"] if v["active"])
    metrics = version["metrics"]
    style = metrics.get("style") or {}
    named = sum(bool(a.get("named")) for a in (style.get("identity") or {}).get("persona", []))
    return {
        "flags": flags,
        "minutes": round(minutes, 1),
        "steps": version["training"]["steps"],
        "nll": metrics["nll"]["persona"],
        "interval": metrics["interval"]["persona"],
        "minus_written": metrics["difference"]["persona_minus_written_prompt"],
        "share": (style.get("share") or {}).get("persona"),
        "named": named,
    }


def print_table(results: dict[str, dict]) -> None:
    print(
        "| variant | flags | steps | held-out NLL [95%] | persona - written [95%] | style share [95%] "
        "| names itself | minutes |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, row in results.items():
        low, high = row["interval"]
        diff, diff_low, diff_high = row["minus_written"]
        share = row["share"]
        share_text = f"{share[0]:.0%} [{share[1]:.0%}, {share[2]:.0%}]" if share else "-"
        print(
            f"| {name} | {' '.join(row['flags']) or '(spec)'} | {row['steps']} | "
            f"{row['nll']:.3f} [{low:.3f}, {high:.3f}] | {diff:+.3f} [{diff_low:+.3f}, {diff_high:+.3f}] | "
            f"{share_text} | {row['named']}/3 | {row['minutes']:.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "personas" / "falstaff.toml")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("defaults.json"))
    args = parser.parse_args()
    results: dict[str, dict] = json.loads(args.out.read_text()) if args.out.exists() else {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.variants:
            if name in results:
                continue
            print(f"== {name}: persona train --spec {args.spec} {' '.join(VARIANTS[name])}")
            results[name] = run_variant(args.spec.resolve(), VARIANTS[name], Path(scratch) / name)
            args.out.write_text(json.dumps(results, indent=1))
    print_table(results)


if __name__ == "__main__":
    main()
