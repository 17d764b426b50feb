"""Helpers for the tests of `persona serve`: a real server on a thread, its arguments as the CLI
parses them, and personas that fit the tiny model."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from persona.cli.main import build_parser


def serve_args(*flags: str):
    """The arguments `persona serve FLAGS...` parses to (port 0: a free one)."""
    return build_parser().parse_args(["serve", "--port", "0", *flags])


@contextmanager
def running_server(*flags: str) -> Iterator:
    """`persona serve FLAGS...` on a thread of this process; yields its `Running`."""
    from persona.serve.run import start

    running = start(serve_args(*flags))
    thread = threading.Thread(
        target=running.server.run, kwargs={"sockets": running.sockets}, daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 30
    while not running.server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield running
    finally:
        running.server.should_exit = True
        thread.join(timeout=30)
        running.close()


def add_persona(library_path, name: str, fingerprint, seed: int, description: str = "") -> None:
    """A random soft prompt of 4 virtual tokens for the model `fingerprint` names, as `name`."""
    import torch

    from persona.library import open_library
    from persona.prompt.softprompt import SoftPrompt

    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(4, fingerprint.hidden_size, generator=generator) * 0.5  # (4, D)
    prompt = SoftPrompt(
        embeddings=embeddings, name=name, description=description, fingerprint=fingerprint
    )
    library = open_library(library_path)
    try:
        library.add_version(name, prompt, description=description)
    finally:
        library.close()
