"""`persona chat`: the terminal chat client. Everything that can fail is checked before it starts."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from persona.cli import startup
from persona.errors import ConfigError
from persona.tui.terminal import MIN_HEIGHT, MIN_WIDTH


def _resume_id(value: str) -> int | str:
    if value == "latest":
        return value
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a conversation id; `persona history` lists them"
        ) from None
    if number < 1:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a conversation id; `persona history` lists them"
        )
    return number


def register(subparsers: argparse._SubParsersAction) -> None:
    from persona.cli.reply import add_generation_arguments, add_precision_argument

    parser = subparsers.add_parser(
        "chat",
        help="chat in the terminal, switching persona whenever you like",
        description=(
            "Open the chat client. With no flags it starts a new conversation with the default persona "
            "(`default_persona` setting), or the model's own voice when there is none. "
            "Inside: Enter sends, Ctrl+J adds a newline, F2 picks a persona, Esc stops a reply, /help lists commands."
        ),
    )
    parser.add_argument(
        "--persona",
        metavar="NAME",
        help="the persona that speaks first (switch later with F2 or /persona)",
    )
    parser.add_argument(
        "--model",
        metavar="PATH",
        help="a local Hugging Face model directory (default: the embedded SmolLM2-135M-Instruct, or $PERSONA_MODEL)",
    )
    parser.add_argument(
        "--server",
        metavar="URL",
        help="replies from a running `persona serve` (or any OpenAI-compatible server) at URL, "
        "e.g. http://HOST:8000/v1; its personas are the ones it lists, the conversation is saved here",
    )
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        default=None,
        help="the server's API key, for --server (default: $PERSONA_API_KEY)",
    )
    parser.add_argument(
        "--local",
        action="store_true",
        help="load the model here even if `persona serve` is running",
    )
    parser.add_argument(
        "--resume",
        metavar="ID",
        nargs="?",
        const="latest",
        type=_resume_id,
        help="continue a saved conversation: the latest one, or conversation ID",
    )
    parser.add_argument(
        "--library",
        metavar="PATH",
        type=Path,
        help="the persona library file (default: in the data dir)",
    )
    add_precision_argument(parser)
    add_generation_arguments(parser)
    parser.set_defaults(func=run)


def check_terminal() -> None:
    """Refuse, in one line, to start without an interactive terminal of a usable size."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise ConfigError(
            "persona chat needs an interactive terminal; for scripts use `persona reply MESSAGE`"
        )
    size = shutil.get_terminal_size()
    if size.columns < MIN_WIDTH or size.lines < MIN_HEIGHT:
        raise ConfigError(
            f"the terminal is {size.columns}×{size.lines}; make it at least {MIN_WIDTH}×{MIN_HEIGHT} and run persona chat again"
        )


def run(args: argparse.Namespace) -> int:
    from persona.cli.reply import generation_config, given_settings

    generation_config(args)  # ConfigError before anything loads
    check_terminal()
    if args.server is not None:
        from persona.engine.remote import API_KEY_ENV, RemoteRunner

        if args.model is not None:
            raise ConfigError(
                "--model names a model to load here; with --server the server's model answers"
            )
        runner = RemoteRunner(args.server, args.api_key or os.environ.get(API_KEY_ENV))
        return _run_remote(args, given_settings(args), runner)
    if not args.local:
        from persona.serve.client import local_runner

        # a running `persona serve` that serves this model and library answers: no model start
        local = local_runner(args)
        if local is not None:
            return _run_remote(args, given_settings(args), local, "persona serve")

    from persona.model import warmup

    warmup.begin(
        args.model, precision=args.precision, backend=args.backend
    )  # while torch is imported below

    from persona.library import open_library

    library = open_library(args.library)
    try:
        if args.persona is not None:
            library.get_prompt(args.persona)  # NotFoundError now, not after the model has loaded
            library.get_defaults(args.persona)  # and defaults that no longer read
        _check_resume(library, args.resume)

        from persona.engine.chat import ChatEngine
        from persona.model.loader import load_chat_model

        print("persona: loading the model…", file=sys.stderr, flush=True)
        loaded = load_chat_model(
            args.model,
            precision=args.precision,
            backend=args.backend,
            gguf=args.gguf,
            device=args.device,
        )
        engine = ChatEngine(loaded)
        startup.ready()

        from persona.engine import cores
        from persona.tui.local import local_backend

        backend = local_backend(engine, library)
        cores.leave_to_workers()  # the screen's thread: the runner's own thread generates
        # only the flags given: the rest come from each persona's defaults, then the built-in ones
        return _chat(backend, library, args, given_settings(args))
    finally:
        library.close()


def _run_remote(
    args: argparse.Namespace, given: dict[str, Any], runner: Any, label: str | None = None
) -> int:
    """The chat with its replies from a server (`runner`, a RemoteRunner): torch is never
    imported. `label`: how the status line names the server (default: its URL)."""
    from persona.library import open_library
    from persona.tui.backend import remote_backend

    library = open_library(args.library)
    try:
        _check_resume(library, args.resume)
        backend = remote_backend(runner, library, label)  # down or refusing: one line, here
        startup.ready()
        return _chat(backend, library, args, given)
    finally:
        runner.close()
        library.close()


def _chat(backend: Any, library: Any, args: argparse.Namespace, given: dict[str, Any]) -> int:
    """Run the chat app until the user leaves; say where the conversation is saved."""
    from persona.tui.app import PersonaChatApp

    app = PersonaChatApp(
        backend, library, persona=args.persona, resume=args.resume, overrides=given
    )
    app.run()
    conversation_id = app.session.conversation_id
    if conversation_id is not None:
        try:
            print(
                f"persona: conversation {conversation_id} is saved; continue it with `persona chat --resume {conversation_id}`",
                file=sys.stderr,
            )
        except OSError:  # the terminal went away (it was hung up)
            pass
    return 0 if app.return_code in (None, 0) else int(app.return_code)


def _check_resume(library: Any, resume: int | str | None) -> None:
    """NotFoundError now for a conversation that cannot be resumed, not after the model loaded."""
    from persona.errors import NotFoundError

    if isinstance(resume, int):
        library.get_messages(resume)
    elif resume == "latest" and not library.list_conversations():
        raise NotFoundError(
            "there is no saved conversation to resume; start one with `persona chat`"
        )
