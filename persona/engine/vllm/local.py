"""A vLLM server started by the gateway itself (`persona serve --backend vllm` without --vllm-url).

It runs from its own virtual environment (`.venv-vllm` beside the project, which `make vllm`
creates, or `--vllm-python`), never persona's: vLLM pins another transformers. Its path gets one
folder holding a link to persona's KV connector package only (as `persona_kvconnector`), so
vLLM imports the connector of this very gateway and nothing else of persona. The connector reads
personas from the gateway's KV directory, and from the gateway's URL (with its API key, in the
environment) where that fails. The server is stopped with the gateway.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx  # httpx, as huggingface_hub and openai install it

import persona.kvconnector
from persona.engine.vllm.upstream import connector_config
from persona.errors import ConfigError
from persona.kvconnector import PACKAGE
from persona.kvconnector.store import KEY_ENV

PROJECT = Path(persona.__file__).resolve().parents[1]
DEFAULT_PYTHON = PROJECT / ".venv-vllm" / "bin" / "python"
SERVED_NAME = "persona"
CPU_KV_SPACE_ENV, CPU_KV_SPACE_GIB = "VLLM_CPU_KVCACHE_SPACE", "1"
START_TIMEOUT_S = 900.0  # a CPU build compiles its kernels at a first start without --enforce-eager
STOP_WAIT_S = 30.0


@dataclass
class LocalVllm:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        """SIGTERM to the server and its workers, SIGKILL to what is left after STOP_WAIT_S."""
        if self.process.poll() is not None:
            return
        _signal_group(self.process, signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            _signal_group(self.process, signal.SIGKILL)
            self.process.wait(timeout=STOP_WAIT_S)


def _signal_group(process: subprocess.Popen[bytes], number: int) -> None:
    try:
        os.killpg(process.pid, number)  # its own session: the group is vLLM and its workers
    except ProcessLookupError:
        pass


def vllm_python(given: str | None) -> Path:
    path = Path(given).expanduser() if given else DEFAULT_PYTHON
    if not path.is_file():
        hint = "check --vllm-python" if given else "run `make vllm`, or give --vllm-python PATH"
        raise ConfigError(
            f"no vLLM to start: {path} is absent; {hint}, or point --vllm-url at running servers"
        )
    return path


def connector_path(folder: Path) -> Path:
    """A folder whose only entry links to persona's KV connector package: vLLM's PYTHONPATH."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    link = folder / PACKAGE
    target = Path(persona.kvconnector.__file__).resolve().parent
    if link.is_symlink() and link.resolve() == target:
        return folder
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target, target_is_directory=True)
    return folder


def start_local_vllm(
    *,
    python: Path,
    model_dir: Path,
    dtype: str,
    kv_dir: Path,
    gateway_url: str | None,
    api_key: str | None,
    extra_args: str | None,
    state_dir: Path,
    timeout_s: float = START_TIMEOUT_S,
) -> LocalVllm:
    """Start vLLM on `model_dir` with persona's KV connector and wait until it serves."""
    port = _free_port()
    extra = {"directory": str(kv_dir)}
    if gateway_url:
        extra["url"] = gateway_url
    command = [
        str(python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        SERVED_NAME,
        "--dtype",
        dtype,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--kv-transfer-config",
        connector_config(extra),
        *shlex.split(extra_args or ""),
    ]
    environment = {
        # vLLM's CPU build reserves this many GiB for its KV cache; unset, it claims a share
        # (--gpu-memory-utilization) of the machine's whole memory and refuses to start where
        # less is free. A GPU build ignores it; the user's own value wins
        CPU_KV_SPACE_ENV: CPU_KV_SPACE_GIB,
        **{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
        "PYTHONPATH": str(connector_path(state_dir / "vllm-connector")),
    }
    if api_key:
        environment[KEY_ENV] = api_key
    log = state_dir / "vllm.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=environment,
            start_new_session=True,
        )
    server = LocalVllm(process, f"http://127.0.0.1:{port}", log)
    try:
        _wait_ready(server, timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: LocalVllm, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        code = server.process.poll()
        if code is not None:
            lines = server.log.read_text(errors="replace").strip().splitlines()
            last = lines[-1][:300] if lines else "no output"
            raise ConfigError(f"vLLM exited ({code}) while starting: {last} (log: {server.log})")
        try:
            if httpx.get(f"{server.url}/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise ConfigError(f"vLLM did not serve within {timeout_s:.0f} s (log: {server.log})")
        time.sleep(1)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
