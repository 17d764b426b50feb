"""`persona serve`: keep the model loaded for `persona reply` (see persona.server)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from persona.cli.reply import add_precision_argument

    parser = subparsers.add_parser(
        "serve",
        help="keep the model loaded so that `persona reply` answers at once",
        description="Load the model once and answer `persona reply` through a socket in the data dir "
        "(owner-only) until Ctrl-C. Replies asking for another model, precision or backend "
        "run on their own as usual.",
    )
    parser.add_argument(
        "--model",
        metavar="PATH",
        help="a local Hugging Face model directory (default: the embedded model, or $PERSONA_MODEL)",
    )
    add_precision_argument(parser)
    parser.add_argument(
        "--idle-exit",
        type=_minutes,
        metavar="MINUTES",
        help="stop after this many minutes without a request (for a script: start it in the background and forget it)",
    )
    parser.set_defaults(func=run)


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number of minutes, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    from persona.server import serve

    return serve(args)
