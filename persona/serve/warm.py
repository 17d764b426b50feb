"""`persona reply --warm MINUTES`: a server started on demand, which stops itself when idle.

A script that calls `persona reply` many times pays the model's start (seconds, most of it
`import torch`) at every call. With --warm (or $PERSONA_WARM), a call that finds no server that
can answer it starts `persona serve` in the background, with the same model, precision, backend
and library and `--idle-exit MINUTES`, waits for its socket, and replies through it; the calls
after it reply through the running server at once. The server listens on the owner-only socket
and on a loopback port the system picks (no fixed port to collide with); its output goes to a
log in the data dir. Only the standard library is used here, as in persona.serve.client.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from persona.errors import ConfigError
from persona.paths import data_dir
from persona.serve.identity import socket_path

WARM_ENV = "PERSONA_WARM"
LOG_NAME = "serve-warm.log"
# the first start on a machine prepares the embedded model (about 40 s on 2 cores) before it loads
START_TIMEOUT_S = 180.0
POLL_S = 0.05


def parse_minutes(text: str) -> float | None:
    """A positive, finite number of minutes from `text`, or None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0 < value < float("inf") else None


def warm_minutes(given: float | None) -> float | None:
    """--warm's minutes, else $PERSONA_WARM's, else None (no background server)."""
    if given is not None:
        return given
    text = os.environ.get(WARM_ENV, "").strip()
    if not text:
        return None
    value = parse_minutes(text)
    if value is None:
        raise ConfigError(
            f"${WARM_ENV} must be a positive number of minutes, got {text!r}; "
            "unset it to reply without a background server"
        )
    return value


def serve_command(args: argparse.Namespace, minutes: float) -> list[str]:
    """`persona serve` for what `args` (a reply's) asks for: a server persona.serve.client finds
    serving the same model, precision, backend, device, GGUF file and library."""
    command = [sys.executable, "-m", "persona", "serve", "--port", "0"]
    command += ["--idle-exit", f"{minutes:g}", "--precision", args.precision]
    command += ["--backend", args.backend, "--device", args.device]
    if args.model:
        command += ["--model", str(args.model)]
    if args.gguf:
        command += ["--gguf", str(args.gguf)]
    if args.library is not None:
        command += ["--library", str(Path(args.library).expanduser().resolve())]
    return command


def start_warm_server(args: argparse.Namespace, minutes: float) -> subprocess.Popen[bytes] | None:
    """Start a server in the background and wait until its socket is there: the server's process
    once it is, None (after one line on stderr) when it stopped first or did not come up in time."""
    log_path = data_dir() / LOG_NAME
    path = socket_path()
    with open(log_path, "w", encoding="utf-8") as log:  # the newest start's output alone
        child = subprocess.Popen(
            serve_command(args, minutes),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # not stopped by the terminal's Ctrl-C or hang-up
            close_fds=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if path.exists():
            return child  # it listens from the moment the file exists (persona.serve.run.bind_unix)
        if child.poll() is not None:
            if path.exists():  # another reply's server came up meanwhile: that one answers
                return child
            _say(f"the background server stopped before it was ready (see {log_path})")
            return None
        time.sleep(POLL_S)
    _say(f"the background server was not ready in {START_TIMEOUT_S:g} s (see {log_path})")
    return None


def _say(line: str) -> None:
    print(f"persona: {line}; replying without it", file=sys.stderr, flush=True)
