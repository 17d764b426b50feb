"""`persona` entry point: builds the argparse tree from the command modules and runs one command.

Each command module exposes `register(subparsers)`; it must not import torch or transformers at
module level, so that `persona list`, `show`, `history` and `--help` start instantly.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from persona import __version__
from persona.cli import startup
from persona.errors import PersonaError

COMMAND_MODULES: tuple[str, ...] = (
    "persona.cli.reply",
    "persona.cli.chat_cmd",
    "persona.cli.library_cmds",
    "persona.cli.defaults_cmd",
    "persona.cli.blend_cmd",
    "persona.cli.train_cmds",
    "persona.cli.doctor_cmd",
    "persona.cli.serve_cmd",
)


class PersonaArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one terminal line: arguments it quotes back (unrecognized
    ones, a bad option) may hold escape sequences, which are shown escaped, never run."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = PersonaArgumentParser(
        prog="persona",
        description="Chat with trained personas (deep or soft prompts) on a frozen language model.",
    )
    parser.add_argument("--version", action="version", version=f"persona {__version__}")
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=PersonaArgumentParser
    )
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    startup.pause()  # until the model is loaded, see persona.cli.startup
    try:
        return _run(argv)
    finally:
        startup.resume()


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except PersonaError as exc:
        print(f"persona: error: {one_line(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("persona: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def one_line(message: str) -> str:
    """A message as one terminal line: control characters from paths or names the user gave are escaped."""
    return "".join(
        char if char.isprintable() or char == " " else repr(char)[1:-1] for char in message
    )


if __name__ == "__main__":
    sys.exit(main())
