"""Helpers for the tests of `persona serve`: a real server on a thread, its arguments as the CLI
parses them, and personas that fit the tiny model."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
    starters = os.environ.pop("PERSONA_NO_STARTERS", None)
    os.environ["PERSONA_NO_STARTERS"] = "1"  # a module fixture runs before the autouse one sets it
    try:
        library = open_library(library_path)
    finally:
        if starters is None:
            os.environ.pop("PERSONA_NO_STARTERS")
        else:
            os.environ["PERSONA_NO_STARTERS"] = starters
    try:
        library.add_version(name, prompt, description=description)
    finally:
        library.close()


def serve_state(runner, library_path, *, limits=None, **fields):
    """A ServeState over `runner`, its personas from the library at `library_path`, for a model
    with the tiny test model's width."""
    from persona.library import open_library
    from persona.model.fingerprint import Fingerprint
    from persona.serve.app import ServeState
    from persona.serve.catalog import Catalog
    from persona.serve.schemas import Limits

    fingerprint = fields.pop("fingerprint", Fingerprint("LlamaForCausalLM", 32, 382, "0" * 16))
    catalog = Catalog(open_library(library_path), fingerprint, "/models/tiny")
    return ServeState(runner=runner, catalog=catalog, limits=limits or Limits(), **fields)


@contextmanager
def serving_app(state) -> Iterator[str]:
    """The app over `state`, served by uvicorn on a free loopback port; yields the API's base URL."""
    import uvicorn

    from persona.serve.app import create_app
    from persona.serve.run import Server, bind_tcp

    sock = bind_tcp("127.0.0.1", 0)
    config = uvicorn.Config(create_app(state), log_level="warning", lifespan="off")
    server = Server(config, state.activity, 0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        state.runner.close()
        state.catalog.library.close()


class ServerProcess:
    """`persona serve FLAGS...` as a process of its own, its data dir `home`, on a free loopback
    port; `url` is its API's base URL once it listens."""

    def __init__(self, home: Path, flags: list[str]) -> None:
        env = {**os.environ, "PERSONA_HOME": str(home), "PERSONA_NO_STARTERS": "1"}
        env.pop("PERSONA_API_KEY", None)
        self.home = home
        self.process = subprocess.Popen(
            [sys.executable, "-m", "persona", "serve", "--port", "0", *flags],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self.url = ""
        ready = threading.Event()

        def drain() -> None:  # read stderr to the end, so the server never blocks on it
            for line in self.process.stderr:
                self.lines.append(line)
                found = re.search(r"at (http://\S+/v1) ", line)
                if found:
                    self.url = found.group(1)
                    ready.set()
            ready.set()

        self.reader = threading.Thread(target=drain, daemon=True)
        self.reader.start()
        ready.wait(180)
        assert self.url, "".join(self.lines)
        self.wait_listening()

    def wait_listening(self, timeout: float = 30) -> None:
        """The address is printed as the server starts; wait until it answers."""
        import urllib.request

        health = self.url.removesuffix("/v1") + "/health"
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(health, timeout=5):
                    return
            except OSError:
                assert time.monotonic() < deadline, "".join(self.lines)
                assert self.process.poll() is None, "".join(self.lines)
                time.sleep(0.05)

    def stop(self) -> int:
        self.process.terminate()  # SIGTERM: a clean stop
        code = self.process.wait(timeout=60)
        self.reader.join(timeout=10)
        return code


API_KEY = "test-key-1234"
SERVED = {
    "falstaff": "a fat old knight",
    "juliet": "of Verona",
}  # the personas a test server serves


def serving_home(home: Path, fingerprint) -> Path:
    """A data dir whose library holds the SERVED personas, for a server on the tiny model."""
    for seed, (name, description) in enumerate(SERVED.items(), start=1):
        add_persona(home / "library.db", name, fingerprint, seed=seed, description=description)
    return home


def tiny_server(home: Path, model_dir: Path, *flags: str) -> ServerProcess:
    """A server on the tiny model with the API key API_KEY and short replies."""
    return ServerProcess(
        home, ["--model", str(model_dir), "--api-key", API_KEY, "--max-tokens", "64", *flags]
    )
