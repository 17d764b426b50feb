"""Write a starter persona's sidecar `personas/NAME.json` from the library version a training run stored.

    python -m persona.train.sidecar personas/hamlet.toml [--library PATH]

The sidecar holds the held-out evaluation (`metrics`: `{"nll", "interval", "difference", "tokens",
"examples", "population", "style"}`, see `persona.train.evaluate.score` and docs/style.md), the
training record and, for a spec evaluated on its own validation split, the titles of the held-out
scenes, so the numbers in `persona show` say exactly what text they were measured on.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from persona.errors import ConfigError, PersonaError
from persona.train.spec import PersonaSpec, load_spec


def heldout_scenes(spec: PersonaSpec) -> list[str]:
    """The conversations (scenes) the validation split of `spec` holds out, in order, with their position.

    A play's scene headings do not repeat the act, so each title says which scene of the play it is.
    """
    from persona.dialogue.sources import read_source
    from persona.dialogue.split import split_speaker

    config = spec.train_config()
    dialogue = read_source(spec.train, spec.format, base=spec.base)
    split = split_speaker(
        dialogue,
        spec.speaker,
        context_turns=config.context_turns,
        validation_fraction=config.validation_fraction,
        seed=config.seed,
    )
    held = sorted({example.conversation for example in split.validation})
    total = len(dialogue.conversations)
    return [
        f"{dialogue.conversations[index].title} (scene {index + 1} of {total})" for index in held
    ]


def sidecar_record(spec: PersonaSpec, library_path: Path | None) -> dict[str, Any]:
    from persona.library import open_library

    library = open_library(library_path)
    try:
        info = library.get_persona(spec.name)
    finally:
        library.close()
    version = next(v for v in info.versions if v.active)
    if not version.metrics:
        raise ConfigError(
            f"persona {spec.name!r} version {version.version} has no evaluation to record"
        )
    record: dict[str, Any] = {"metrics": version.metrics, "training": version.training}
    if not spec.heldout:
        record["heldout_scenes"] = heldout_scenes(spec)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m persona.train.sidecar", description=__doc__.splitlines()[0]
    )
    parser.add_argument("spec", type=Path, help="the persona spec, e.g. personas/hamlet.toml")
    parser.add_argument(
        "--library",
        type=Path,
        help="the library the persona was trained into (default: the data dir's)",
    )
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec)
        record = sidecar_record(spec, args.library)
    except PersonaError as exc:
        print(f"persona: {exc}", file=sys.stderr)
        return 1
    target = args.spec.with_suffix(".json")
    target.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    nll = record["metrics"]["nll"]
    written = "-" if nll.get("written_prompt") is None else f"{nll['written_prompt']:.4f}"
    print(
        f"wrote {target}: no prompt {nll['no_prompt']:.4f}, written {written}, "
        f"persona {nll['persona']:.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
