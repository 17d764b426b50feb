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
    parser.add_argument("--model", metavar="PATH", help="a local Hugging Face model directory (default: the embedded model, or $PERSONA_MODEL)")
    add_precision_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from persona.server import serve

    return serve(args)
