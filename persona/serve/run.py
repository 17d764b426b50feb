"""Start `persona serve`: check the flags, load the model, bind the sockets, run uvicorn.

One uvicorn server listens on two sockets, TCP (`--host`, `--port`) and the owner-only Unix
socket in the data dir, for one app: a single event loop, scheduler and shutdown, where two
servers would need two loops, or two lifespans over one, and twice the shutdown handling.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from persona.engine.remote import API_KEY_ENV
from persona.engine.runners import RunnerChoice, open_runner
from persona.errors import ConfigError
from persona.library import open_library
from persona.serve.app import ServeState, create_app
from persona.serve.archive import ConversationArchive
from persona.serve.catalog import Catalog
from persona.serve.identity import identity, socket_path
from persona.serve.schemas import Limits

GRACEFUL_SHUTDOWN_S = 5
BACKLOG = 128


def serve(running: Running, idle_exit_minutes: float | None = None) -> int:
    """Serve until Ctrl-C or `kill` (or, with --idle-exit, until no request came for that long)."""
    try:
        print(
            f"persona: serving {running.description} at {running.url} and on {running.path}; "
            "Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
        running.server.run(sockets=running.sockets)
    finally:
        running.close()
    if running.server.idle:
        print(
            f"persona: no request for {idle_exit_minutes:g} minutes; server stopped",
            file=sys.stderr,
        )
    else:
        print("persona: server stopped", file=sys.stderr)
    return 0


@dataclass
class Running:
    """A server ready to run: the model loaded, both sockets bound (not yet listening)."""

    server: Server
    sockets: list[socket.socket]
    path: Path  # the Unix socket
    url: str  # the API's base URL over TCP
    description: str
    state: ServeState
    library: Any

    def close(self) -> None:
        self.state.runner.close()
        for sock in self.sockets:
            sock.close()
        self.path.unlink(missing_ok=True)
        self.library.close()


def start(args: argparse.Namespace) -> Running:
    """Check the flags, bind, load; every refusal comes before the model loads. The caller then
    runs `serve`."""
    if args.api_key is not None and not args.api_key.strip():
        raise ConfigError("--api-key is empty; give a key, or leave the flag out for no key")
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if not is_loopback(args.host) and not api_key:
        raise ConfigError(
            f"--host {args.host} is reachable from other machines; give an API key with "
            f"--api-key or ${API_KEY_ENV} (or keep the default --host 127.0.0.1)"
        )
    limits = Limits(  # a bad --strength is refused here, in one line
        max_tokens=args.max_tokens, max_messages=args.max_messages, strength=args.strength
    )
    choice = RunnerChoice(  # refuses flags that mean nothing together, before anything loads
        model=args.model,
        backend=args.backend,
        precision=args.precision,
        gguf=args.gguf,
        device=args.device,
        scheduler=args.scheduler,
        max_queue=args.max_queue,
        vllm_urls=list(args.vllm_url or []),
        vllm_dtype=args.vllm_dtype,
        vllm_python=getattr(args, "vllm_python", None),
        vllm_args=getattr(args, "vllm_args", None),
        api_key=api_key,
    )
    path = socket_path()
    refuse_second_server(path)
    sockets = [bind_tcp(args.host, args.port)]
    choice.gateway_url = _own_url(sockets[0])  # where a vLLM's connector fetches personas
    library = None
    try:
        library = open_library(args.library)
        opened = open_runner(choice, _warn)
        loaded, runner = opened.engine.loaded, opened.runner
        state = ServeState(
            runner=runner,
            catalog=Catalog(
                library, loaded.fingerprint, loaded.model_id, runner.layout, runner.name
            ),
            limits=limits,
            api_key=api_key,
            max_body_bytes=args.max_body_bytes,
            identity=identity(args),
            record={
                "model": str(loaded.fingerprint),
                "model_id": loaded.model_id,
                "precision": loaded.precision,
            },
            prompt_text=opened.engine.prompt_text,
            archive=(
                ConversationArchive(library, str(loaded.fingerprint))
                if args.save_conversations
                else None
            ),
        )
        try:
            sockets.append(bind_unix(path))
        except ConfigError:
            state.runner.close()
            raise
    except BaseException:
        for sock in sockets:
            sock.close()
        if library is not None:
            library.close()
        raise
    config = uvicorn.Config(
        create_app(state),
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        backlog=BACKLOG,
    )
    host, port = sockets[0].getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return Running(
        server=Server(config, state.activity, (args.idle_exit or 0) * 60),
        sockets=sockets,
        path=path,
        url=f"http://{shown}:{port}/v1",
        description=opened.description,
        state=state,
        library=library,
    )


def _own_url(sock: socket.socket) -> str:
    """This server's base URL over TCP, as a process on this machine reaches it."""
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def _warn(line: str) -> None:
    print(f"persona: {line}", file=sys.stderr, flush=True)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def refuse_second_server(path: Path) -> None:
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # left by a server that did not shut down
    else:
        raise ConfigError(
            f"a persona server is already running on {path}; stop it first (Ctrl-C in its terminal)"
        )
    finally:
        probe.close()


def bind_tcp(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port"
        ) from None
    return sock


def bind_unix(path: Path) -> socket.socket:
    """The local socket, owner-only from the moment it exists."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o077)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {path}: {exc.strerror or exc}; set PERSONA_HOME to a shorter local path"
        ) from None
    finally:
        os.umask(previous)
    os.chmod(path, 0o600)
    sock.listen(BACKLOG)  # a client that finds the file can connect: it waits for the loop to start
    return sock


class Server(uvicorn.Server):
    """uvicorn's server, stopping cleanly on SIGINT and SIGTERM (exit 0, where uvicorn raises the
    signal again once it has shut down) and by itself after `idle_s` seconds without a request."""

    def __init__(self, config: Any, activity: Any, idle_s: float) -> None:
        super().__init__(config)
        self.activity, self.idle_s, self.idle = activity, idle_s, False

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop(self, signum: int, frame: Any) -> None:
        self.force_exit = self.should_exit  # a second Ctrl-C: stop without waiting
        self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.idle_s and self.activity.idle_for() > self.idle_s:
            self.idle = True
            return True
        return await super().on_tick(counter)
