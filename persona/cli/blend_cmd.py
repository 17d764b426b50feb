"""`persona blend A B --name C`: a new persona made from personas of the library, stored as a version.

torch is imported inside the run function only, so that `persona --help` stays instant.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DESCRIPTION = (
    "Make a new persona from the active versions of two or more personas of the library, all "
    "trained for one model and all of one kind (soft or deep), and store it as persona NAME "
    "(version 1, or the next version if NAME exists). interpolate: the weighted mean of prompts "
    "of one length; concat: every prompt's "
    "virtual tokens one after the other, in the order given. The sources' own defaults "
    "(`persona set`) are not carried over: set the blend's with `persona set NAME ...`."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "blend",
        help="make a persona from two or more personas (interpolate or concatenate their prompts)",
        description=DESCRIPTION,
    )
    parser.add_argument(
        "sources", metavar="PERSONA", nargs="+", help="the personas to blend, in order"
    )
    parser.add_argument("--name", required=True, metavar="NAME", help="the new persona's name")
    parser.add_argument(
        "--method",
        default="interpolate",
        metavar="interpolate|concat",
        help="interpolate (default): the weighted mean, for prompts of one length; concat: the "
        "prompts' rows stacked, any lengths (their sum at most the limit on virtual tokens)",
    )
    parser.add_argument(
        "--weights",
        type=_weights,
        metavar="W,W,...",
        help="interpolate only: one positive weight per persona, normalised to sum 1 (default: equal)",
    )
    parser.add_argument(
        "--description",
        metavar="TEXT",
        help="the description (default for a new persona: 'A blend of A and B'; an existing one keeps its own)",
    )
    parser.add_argument(
        "--library",
        metavar="PATH",
        type=Path,
        help="the persona library file (default: in the data dir)",
    )
    parser.set_defaults(func=run_blend)


def _weights(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas such as 0.7,0.3, got {text!r}"
        ) from None


def run_blend(args: argparse.Namespace) -> int:
    from persona.library import open_library
    from persona.library.info import prompt_shape
    from persona.prompt.blend import blend_prompts, blend_record, default_description
    from persona.train.config import MAX_VIRTUAL_TOKENS

    library = open_library(args.library)
    try:
        sources = [_active(library, name) for name in args.sources]
        blended = blend_prompts(
            [prompt for _, _, prompt in sources],
            method=args.method,
            name=args.name,
            description=args.description or default_description([n for n, _, _ in sources]),
            max_virtual_tokens=MAX_VIRTUAL_TOKENS,
            weights=args.weights,
        )
        record = blend_record(args.method, sources, blended.weights)
        info = library.add_version(
            args.name,
            blended.prompt,
            description=args.description or None,
            model_id=blended.prompt.base_model,
            training=record,
        )
    finally:
        library.close()
    print(
        f"stored persona {args.name!r} version {info.version}: {describe_blend(record)} "
        f"({prompt_shape(info)})"
    )
    return 0


def _active(library: Any, name: str) -> tuple[str, int, Any]:
    """(canonical name, active version, its prompt) of a library persona."""
    info = library.get_persona(name)  # NotFoundError names the closest personas
    return info.name, info.active_version, library.get_prompt(info.name, info.active_version)


def describe_blend(record: dict[str, Any]) -> str:
    """A blend's training record in one line, as `persona blend` and `persona show` print it:
    'interpolate of falstaff v1 (0.70), juliet v1 (0.30)', 'concat of falstaff v1 (20 tokens), ...'."""
    found = record.get("blend")
    blend: dict[str, Any] = found if isinstance(found, dict) else {}
    parts = []
    for source in blend.get("sources") or []:
        if not isinstance(source, dict):
            continue
        weight = source.get("weight")
        detail = (
            f"{weight:.2f}"
            if isinstance(weight, (int, float))
            else f"{source.get('virtual_tokens', '?')} tokens"
        )
        parts.append(f"{source.get('name', '?')} v{source.get('version', '?')} ({detail})")
    return f"{blend.get('method', '?')} of {', '.join(parts) or '?'}"
