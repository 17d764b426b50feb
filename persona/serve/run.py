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

from persona.engine.chat import ChatEngine
from persona.errors import ConfigError
from persona.library import open_library
from persona.model.loader import load_chat_model
from persona.serve.app import ServeState, create_app
from persona.serve.archive import ConversationArchive
from persona.serve.catalog import Catalog
from persona.serve.identity import identity, socket_path
from persona.serve.scheduler_batch import BatchScheduler
from persona.serve.scheduler_serial import SerialScheduler
from persona.serve.scheduler_vllm import VllmScheduler
from persona.serve.schemas import Limits
from persona.serve.vllm_model import load_gateway_engine
from persona.serve.vllm_upstream import connect

API_KEY_ENV = "PERSONA_API_KEY"
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
        self.state.scheduler.close()
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
    if args.backend != "vllm":
        for flag, given in (
            ("--vllm-url", args.vllm_url is not None),
            ("--vllm-dtype", args.vllm_dtype is not None),
        ):
            if given:
                raise ConfigError(f"{flag} needs --backend vllm")
    path = socket_path()
    refuse_second_server(path)
    sockets = [bind_tcp(args.host, args.port)]
    library = None
    try:
        library = open_library(args.library)
        if args.backend == "vllm":
            engine, scheduler, description = start_vllm(args)
        else:
            scheduler_kind = args.scheduler or "batch"
            loaded = load_chat_model(
                args.model,
                precision=serving_precision(args.precision, args.backend, scheduler_kind),
                backend=args.backend,
                gguf=args.gguf,
                device=args.device,
            )
            engine = ChatEngine(loaded)
            scheduler = make_scheduler(scheduler_kind, engine, args.max_queue)
            description = f"{loaded.model_id} ({loaded.precision}, {scheduler_kind})"
        loaded = engine.loaded
        backend = engine.backend  # vLLM's gateway engine only renders: vLLM runs soft prompts only
        layout, backend_name = (
            (None, "vllm") if args.backend == "vllm" else (backend.layout, backend.name)
        )
        state = ServeState(
            scheduler=scheduler,
            catalog=Catalog(library, loaded.fingerprint, loaded.model_id, layout, backend_name),
            limits=Limits(max_tokens=args.max_tokens, max_messages=args.max_messages),
            api_key=api_key,
            max_body_bytes=args.max_body_bytes,
            identity=identity(args),
            record={
                "model": str(loaded.fingerprint),
                "model_id": loaded.model_id,
                "precision": loaded.precision,
            },
            prompt_text=engine.prompt_text,
            archive=(
                ConversationArchive(library, str(loaded.fingerprint))
                if args.save_conversations
                else None
            ),
        )
        try:
            sockets.append(bind_unix(path))
        except ConfigError:
            state.scheduler.close()
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
        description=description,
        state=state,
        library=library,
    )


def start_vllm(args: argparse.Namespace) -> tuple[ChatEngine, Any, str]:
    """The gateway in front of vLLM servers: the tokenizer and embedding matrix only, every
    server checked (docs/vllm.md). (engine, scheduler, description)"""
    if not args.vllm_url:
        raise ConfigError(
            "--backend vllm needs --vllm-url URL[,URL...]: vLLM servers started with "
            "--enable-prompt-embeds on the same model (see docs/vllm.md)"
        )
    for flag, given in (
        ("--precision", args.precision != "auto"),
        ("--scheduler", args.scheduler is not None),
        ("--gguf", args.gguf is not None),
    ):
        if given:
            raise ConfigError(
                f"{flag} is for a model run here; with --backend vllm the vLLM servers compute "
                "(tell the gateway their --dtype with --vllm-dtype)"
            )
    dtype = args.vllm_dtype or "float32"  # None: not given (refused without --backend vllm)
    engine = load_gateway_engine(args.model, dtype)
    urls = [url for given in args.vllm_url for url in given.split(",") if url.strip()]
    upstreams = connect(urls, engine, dtype, warn=_warn)
    scheduler = VllmScheduler(engine, upstreams, dtype=dtype, max_queue=args.max_queue, log=_warn)
    alive = sum(upstream.alive for upstream in upstreams)
    servers = f"{alive} vLLM server" + ("s" if alive != 1 else "")
    return engine, scheduler, f"{engine.loaded.model_id} ({dtype} on {servers})"


def _warn(line: str) -> None:
    print(f"persona: {line}", file=sys.stderr, flush=True)


def serving_precision(precision: str, backend: str, scheduler: str) -> str:
    """What `--precision auto` means for a server: float32 where rows are batched (a batched step
    reads each float weight once for all rows, where int8 runs its kernel once per row, to give
    every token its own activation scale), else what it means for chat."""
    if precision == "auto" and backend == "torch" and scheduler == "batch":
        return "fp32"
    return precision


def make_scheduler(name: str, engine: Any, max_queue: int) -> Any:
    """`batch` (continuous batching, the default) or `serial` (one reply at a time)."""
    if name == "batch":
        return BatchScheduler(engine, max_queue=max_queue)
    return SerialScheduler(engine, max_queue=max_queue)


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
