"""`persona serve` under concurrent clients: a real server process, the real openai client, in one run.

    python benchmarks/serve.py [--clients 1,4,8,16,32] [--requests-per-client 3] [--max-tokens 64]
                               [--scheduler batch|serial | --compare-schedulers] [--vllm] [--quick]

Starts `persona serve` (the default model, the starter personas of the user's library) on a free
loopback port and sends greedy streamed chat completions, each client a different persona (the five
starters and the bare model, in turn), from 1, 4, 8, ... concurrent clients, several requests each.
Prints per level: aggregate completion tokens/s, p50/p95 time to first token, the ratio against the
baseline, the same requests sent one at a time (measured in this run, each distinct request once),
and how many replies equal their solo run. Then a prefix cache line: TTFT at turn N of 8
concurrent growing conversations against turn 1 (target <= 1.3x).
The server is stopped at the end whatever happens (SIGTERM to its process group, then SIGKILL).

With --vllm (clients 1,8,32 unless --clients says otherwise), the same measurement then runs a
second time against `persona serve --backend vllm` in front of a real vLLM server (its CPU build,
from .venv-vllm, on the default model's safetensors directory, float32, --enforce-eager), one
server after the other, and a last table puts both backends side by side: aggregate tokens/s and
p50/p95 time to first token, and persona/vLLM at each level. Then vLLM alone: its own server
asked directly (no gateway, no persona: the bare model), the same questions and levels, and a
line per level of persona's own backend against it. vLLM is stopped at the end too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import openai

from persona.starters import find_starters

QUESTIONS = [
    "Tell me a long story about a sailor who finds a map to a hidden island.",
    "Describe, at length, the finest feast you ever attended.",
    "What do you think of love? Explain yourself fully.",
    "Tell me of your father and the house you grew up in.",
    "What is honour, and would you die for it?",
    "Describe a storm at sea as if you were in it.",
]
FOLLOW_UPS = [
    "What happened next?",
    "Who else was there?",
    "Why do you say so?",
    "Tell me more about that.",
    "And what did you do then?",
    "How did it end?",
]
GREEDY = {"temperature": 0, "extra_body": {"repetition_penalty": 1.0}}  # as vLLM's greedy
SETTINGS = {  # flag -> (full run, --quick)
    "clients": ("1,4,8,16,32", "1,4"),
    "requests_per_client": (3, 2),
    "max_tokens": (64, 16),
    "turns": (20, 4),
    "turn_tokens": (32, 8),
    "conversations": (8, 4),
}
VLLM_CLIENTS = "1,8,32"  # --vllm's levels: those of the reference column
WARM_UP_TOKENS = 4  # a few decode steps too, not only the prefill
READY_TIMEOUT_S = 600  # the model loads (and, the first time, packs int8) before the port opens
REQUEST_TIMEOUT_S = 600
IDLE_EXIT_MINUTES = 5  # if this script is killed outright, the server still stops by itself
VLLM_PYTHON = Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python"  # make vllm
VLLM_READY_TIMEOUT_S = 600  # a first start compiles kernels; --enforce-eager took 35 s here
VLLM_NAME = "smollm2"  # --served-model-name; the gateway checks the model itself, not the name


# ---- the server ----------------------------------------------------------------------------------


class ServerProcess:
    """`persona serve --port 0 FLAGS` in its own process group; `url` once it answers /health."""

    def __init__(self, flags: Sequence[str]) -> None:
        env = dict(os.environ)
        for name in ("PERSONA_API_KEY", "PERSONA_NO_STARTERS"):
            env.pop(name, None)
        command = [sys.executable, "-m", "persona", "serve", "--port", "0"]
        command += ["--idle-exit", str(IDLE_EXIT_MINUTES), *flags]
        self.lines: list[str] = []
        self.url = ""  # the API's base URL, .../v1
        self.description = ""  # "MODEL (precision, scheduler)"
        self._announced = threading.Event()
        self.process = subprocess.Popen(
            command, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
        )
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        """Read stderr to the end (so the server never blocks on it), noting the URL it serves."""
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            found = re.search(r"serving (.+) at (http://\S+/v1) ", line)
            if found:
                self.description, self.url = found.group(1), found.group(2)
                self._announced.set()
        self._announced.set()

    def wait_ready(self) -> None:
        if not self._announced.wait(READY_TIMEOUT_S) or not self.url:
            raise RuntimeError(f"persona serve did not start:\n{self.log_tail()}")
        root = self.url.removesuffix("/v1")
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{root}/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"persona serve never answered /health:\n{self.log_tail()}")
            time.sleep(0.1)

    def get(self, path: str) -> str:
        """GET a path of the server (`/metrics`, `/v1/models`): the body as text."""
        with urllib.request.urlopen(self.url.removesuffix("/v1") + path, timeout=30) as response:
            return response.read().decode()

    def log_tail(self, lines: int = 20) -> str:
        return "".join(self.lines[-lines:])

    def stop(self) -> int:
        code = stop_group(self.process)
        self._reader.join(timeout=10)
        return code

    def __enter__(self) -> ServerProcess:
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_group(process: subprocess.Popen) -> int:
    """SIGTERM to the process's group (a clean stop), SIGKILL if it has not ended in 60 s."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout=30)
        except ProcessLookupError:
            pass
    return process.wait()


class VllmProcess:
    """vLLM's OpenAI server (.venv-vllm) on `model_dir`, with persona's KV connector, in its own process
    group on a free loopback port; its output goes to a log file. `url` is its root."""

    def __init__(self, model_dir: Path) -> None:
        if not VLLM_PYTHON.exists():
            raise RuntimeError(f"{VLLM_PYTHON} is absent; `make vllm` creates it")
        self.model_dir = model_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server"]
        command += ["--model", str(model_dir), "--served-model-name", VLLM_NAME]
        command += ["--enable-prompt-embeds", "--dtype", "float32", "--max-model-len", "2048"]
        command += ["--enforce-eager", "--host", "127.0.0.1", "--port", str(self.port)]
        # persona's KV connector, reading personas from the gateway's folder in this data dir
        from persona.engine.vllm.local import connector_path
        from persona.engine.vllm.upstream import connector_config
        from persona.paths import data_dir

        kv = {"directory": str(data_dir() / "vllm-kv")}
        command += ["--kv-transfer-config", connector_config(kv)]
        self.command = command
        env = {
            **os.environ,
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "PYTHONPATH": str(connector_path(data_dir() / "vllm-connector")),
        }
        log = tempfile.NamedTemporaryFile(prefix="persona-bench-vllm-", suffix=".log", delete=False)
        self.log = Path(log.name)
        with log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=ends_with_parent,
            )
        self.started = time.monotonic()
        self.ready_s = math.nan

    def wait_ready(self) -> None:
        """Until /health or /v1/models answers 200 (VLLM_READY_TIMEOUT_S at most)."""
        deadline = self.started + VLLM_READY_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"vLLM exited with {self.process.returncode} before it answered "
                    f"({self.log}):\n{self.log_tail()}"
                )
            for path in ("/health", "/v1/models"):
                try:
                    with urllib.request.urlopen(self.url + path, timeout=5) as response:
                        if response.status == 200:
                            self.ready_s = time.monotonic() - self.started
                            return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"vLLM did not answer within {VLLM_READY_TIMEOUT_S} s ({self.log}):\n"
                    f"{self.log_tail()}"
                )
            time.sleep(1)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> int:
        return stop_group(self.process)

    def __enter__(self) -> VllmProcess:
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ends_with_parent() -> None:
    """In the child before exec: SIGTERM when this script dies, even by SIGKILL (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_on_sigterm() -> None:
    """`kill` of this script unwinds it like Ctrl-C, so every `finally` (the server's stop) runs."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def served_models(server: ServerProcess) -> list[str]:
    """The starter personas the server lists, then the bare model's id."""
    listed = json.loads(server.get("/v1/models"))["data"]
    names = {entry["id"] for entry in listed if entry.get("persona")}
    starters = [starter.name for starter in find_starters() if starter.name in names]
    bare = [entry["id"] for entry in listed if entry.get("persona") is None]
    return starters + bare


def client_for(server: ServerProcess) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=server.url, api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT_S
    )


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (p95 of 4 values is the largest)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))]


# ---- requests ------------------------------------------------------------------------------------


@dataclass
class Timed:
    """One streamed completion as the client saw it."""

    first_token_s: float  # request sent -> first piece of text
    seconds: float  # request sent -> stream ended
    completion_tokens: int
    prompt_tokens: int
    text: str


async def timed_chat(
    client: openai.AsyncOpenAI, model: str, messages: list[dict[str, str]], max_tokens: int
) -> Timed:
    start = time.perf_counter()
    first: float | None = None
    pieces: list[str] = []
    completion_tokens = prompt_tokens = 0
    stream = await client.chat.completions.create(
        model=model,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
        **GREEDY,  # type: ignore[arg-type]
    )
    async for chunk in stream:
        if chunk.usage is not None:
            completion_tokens = chunk.usage.completion_tokens
            prompt_tokens = chunk.usage.prompt_tokens
        for choice in chunk.choices:
            if choice.delta.content:
                first = first or time.perf_counter()
                pieces.append(choice.delta.content)
    end = time.perf_counter()
    return Timed(
        (first or end) - start, end - start, completion_tokens, prompt_tokens, "".join(pieces)
    )


Key = tuple[str, str]  # (model, question): a distinct request


def plan(models: list[str], clients: int, per_client: int) -> list[list[Key]]:
    """Each client's requests: its own persona, questions in turn (offset by client)."""
    return [
        [
            (
                models[index % len(models)],
                QUESTIONS[(index // len(models) + turn) % len(QUESTIONS)],
            )
            for turn in range(per_client)
        ]
        for index in range(clients)
    ]


async def ask(client: openai.AsyncOpenAI, key: Key, max_tokens: int) -> Timed:
    return await timed_chat(client, key[0], [{"role": "user", "content": key[1]}], max_tokens)


@dataclass
class Level:
    clients: int
    wall_s: float
    results: list[tuple[Key, Timed]] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(timed.completion_tokens for _, timed in self.results)

    @property
    def rate(self) -> float:
        return self.tokens / self.wall_s

    @property
    def stream_rate(self) -> float:
        """Median over the replies of tokens per second once streaming: (tokens - 1) over first
        piece -> end. At one client it is the decode rate a user sees, beside chat's own."""
        rates = [
            (timed.completion_tokens - 1) / (timed.seconds - timed.first_token_s)
            for _, timed in self.results
            if timed.completion_tokens > 1 and timed.seconds > timed.first_token_s
        ]
        return statistics.median(rates) if rates else 0.0


async def run_level(client: openai.AsyncOpenAI, keys: list[list[Key]], max_tokens: int) -> Level:
    async def one_client(mine: list[Key]) -> list[tuple[Key, Timed]]:
        return [(key, await ask(client, key, max_tokens)) for key in mine]

    start = time.perf_counter()
    per_client = await asyncio.gather(*(one_client(mine) for mine in keys))
    level = Level(len(keys), time.perf_counter() - start)
    level.results = [item for results in per_client for item in results]
    return level


async def conversations(
    client: openai.AsyncOpenAI, models: list[str], count: int, turns: int, max_tokens: int
) -> list[list[Timed]]:
    """`count` concurrent conversations of `turns` turns; each turn appends the reply and a new
    user message. Per conversation, the Timed of each turn."""

    async def one(index: int) -> list[Timed]:
        model = models[index % len(models)]
        messages = [{"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}]
        timings = []
        for turn in range(turns):
            timed = await timed_chat(client, model, messages, max_tokens)
            timings.append(timed)
            messages += [
                {"role": "assistant", "content": timed.text or "..."},
                {"role": "user", "content": FOLLOW_UPS[(index + turn) % len(FOLLOW_UPS)]},
            ]
        return timings

    return await asyncio.gather(*(one(index) for index in range(count)))


# ---- one server, every level ---------------------------------------------------------------------


async def measure(server: ServerProcess, args: argparse.Namespace) -> list[Level]:
    models = served_models(server)
    print(f"persona serve: {server.description} at {server.url}")
    print(f"  models, one per client in turn: {', '.join(models)}")
    client = client_for(server)
    plans = {clients: plan(models, clients, args.requests_per_client) for clients in args.clients}
    distinct = list(dict.fromkeys(key for keys in plans.values() for mine in keys for key in mine))
    for key in distinct:  # warm-up: every persona loaded, every prompt's prefix cached alike
        await ask(client, key, WARM_UP_TOKENS)

    solo: dict[Key, Timed] = {}
    for key in distinct:  # the baseline: each distinct request alone
        solo[key] = await ask(client, key, args.max_tokens)
    levels = [await run_level(client, plans[clients], args.max_tokens) for clients in args.clients]
    report_levels(args, distinct, solo, levels)

    talks = await conversations(client, models, args.conversations, args.turns, args.turn_tokens)
    report_conversations(args, talks)
    await client.close()
    return levels


def report_levels(
    args: argparse.Namespace, distinct: list[Key], solo: dict[Key, Timed], levels: list[Level]
) -> None:
    solo_tokens = sum(solo[key].completion_tokens for key in distinct)
    solo_seconds = sum(solo[key].seconds for key in distinct)
    print(
        f"\ngreedy streamed chat completions, max_tokens {args.max_tokens}, "
        f"{args.requests_per_client} per client; baseline: the same requests one at a time"
    )
    print(
        f"  one at a time: {len(distinct)} distinct requests, {solo_tokens / solo_seconds:.1f} "
        f"tokens/s, {solo_tokens / len(distinct):.0f} tokens per reply"
    )
    header = (
        f"  {'clients':>7s} {'requests':>8s} {'tokens':>6s} {'tokens/s':>8s} {'vs 1-at-a-time':>14s}"
        f" {'ttft p50':>8s} {'ttft p95':>8s} {'same as solo':>12s} {'stream tok/s':>12s}"
    )
    print(header)
    for level in levels:
        keys = [key for key, _ in level.results]
        # the same requests one at a time: the sum of their solo tokens over their solo seconds
        baseline = sum(solo[key].completion_tokens for key in keys) / sum(
            solo[key].seconds for key in keys
        )
        firsts = [timed.first_token_s for _, timed in level.results]
        same = sum(timed.text == solo[key].text for key, timed in level.results)
        print(
            f"  {level.clients:7d} {len(level.results):8d} {level.tokens:6d} {level.rate:8.1f}"
            f" {level.rate / baseline:13.2f}x {percentile(firsts, 0.5):7.3f}s"
            f" {percentile(firsts, 0.95):7.3f}s {same:5d} of {len(keys):<4d}"
            f" {level.stream_rate:12.1f}"
        )
    if not args.vllm:
        print("  (--vllm measures vLLM on the same requests, and vLLM alone, in this run)")


def report_conversations(args: argparse.Namespace, talks: list[list[Timed]]) -> None:
    first = statistics.median(timings[0].first_token_s for timings in talks)
    last = statistics.median(timings[-1].first_token_s for timings in talks)
    history = statistics.median(timings[-1].prompt_tokens for timings in talks)
    print(
        f"\nprefix cache: {len(talks)} concurrent conversations of {args.turns} turns, "
        f"{args.turn_tokens} tokens per reply; median time to first token"
    )
    print(
        f"  turn 1 {first:.3f}s, turn {args.turns} {last:.3f}s ({history:.0f} prompt tokens): "
        f"{last / first:.2f}x (target <= 1.3x)"
    )


def run_with(scheduler: str, args: argparse.Namespace) -> tuple[list[Level], str]:
    return run_server(["--scheduler", scheduler, "--precision", args.precision], args)


def run_vllm(args: argparse.Namespace) -> tuple[list[Level], str, list[Level]]:
    """vLLM on the default model, the gateway in front of it measured as persona's own backend
    was, then vLLM alone; both stopped before returning. (gateway levels, a line on vLLM, vLLM
    alone levels)"""
    from persona.model.location import default_model_dir

    vllm = VllmProcess(default_model_dir())
    print(f"vLLM: {' '.join(vllm.command[1:])} (log {vllm.log})", flush=True)
    try:
        with vllm:
            print(f"  ready in {vllm.ready_s:.0f} s at {vllm.url}\n", flush=True)
            levels, description = run_server(["--backend", "vllm", "--vllm-url", vllm.url], args)
            alone = asyncio.run(measure_alone(vllm, args))
    finally:
        code = vllm.stop()
    if code not in (0, -signal.SIGTERM):
        print(f"  (vLLM exited with {code}; its log: {vllm.log})")
    about = f"{description}; vLLM on {vllm.model_dir}, ready in {vllm.ready_s:.0f} s"
    return levels, about, alone


async def measure_alone(vllm: VllmProcess, args: argparse.Namespace) -> list[Level]:
    """vLLM's own server asked directly, no gateway and no persona (the bare model): the same
    questions, clients and max_tokens as the other runs; vLLM's speed with nothing in front."""
    client = openai.AsyncOpenAI(
        base_url=f"{vllm.url}/v1", api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT_S
    )
    plans = {
        clients: plan([VLLM_NAME], clients, args.requests_per_client) for clients in args.clients
    }
    for question in QUESTIONS:  # warm-up, as for the other runs
        await ask(client, (VLLM_NAME, question), WARM_UP_TOKENS)
    levels = [await run_level(client, plans[clients], args.max_tokens) for clients in args.clients]
    print("vLLM alone (its own server, the bare model, no gateway)")
    for level in levels:
        print(
            f"  {level.clients:3d} clients: {level.rate:7.1f} tokens/s, TTFT p50 "
            f"{ttft(level, 0.5):.3f} s, p95 {ttft(level, 0.95):.3f} s"
        )
    await client.close()
    return levels


def run_server(flags: list[str], args: argparse.Namespace) -> tuple[list[Level], str]:
    """`persona serve FLAGS` measured at every level, then stopped. (levels, its description)"""
    flags = [*flags, "--max-queue", str(max(64, max(args.clients), args.conversations))]
    server = ServerProcess(flags)
    try:
        with server:
            levels = asyncio.run(measure(server, args))
    finally:
        code = server.stop()
    if code != 0:
        print(f"  (the server exited with {code}:\n{server.log_tail()})")
    return levels, server.description


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", help="concurrency levels, comma-separated (1,4,8,16,32)")
    parser.add_argument("--requests-per-client", type=int)
    parser.add_argument("--max-tokens", type=int, help="max_tokens of each request (64)")
    parser.add_argument("--turns", type=int, help="turns of each conversation (20)")
    parser.add_argument("--turn-tokens", type=int, help="max_tokens of a conversation turn (32)")
    parser.add_argument("--conversations", type=int, help="concurrent conversations (8)")
    parser.add_argument("--scheduler", choices=("batch", "serial"), default="batch")
    parser.add_argument(
        "--compare-schedulers", action="store_true", help="run batch, then serial, in one run"
    )
    parser.add_argument("--precision", choices=("auto", "fp32", "int8"), default="auto")
    parser.add_argument(
        "--vllm",
        action="store_true",
        help="then the same against `persona serve --backend vllm` in front of a real vLLM "
        "server (.venv-vllm); both side by side (clients 1,8,32 unless --clients)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: clients 1,4, 16 tokens, 4 turns"
    )
    args = parser.parse_args(argv)
    if args.vllm and args.clients is None and not args.quick:
        args.clients = VLLM_CLIENTS
    for name, (full, quick) in SETTINGS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.vllm and not VLLM_PYTHON.exists():
        parser.error(f"--vllm needs {VLLM_PYTHON}; `make vllm` creates it")
    given = str(args.clients)
    try:
        args.clients = [int(part) for part in given.split(",") if part.strip()]
    except ValueError:
        args.clients = []
    if not args.clients or min(args.clients) < 1:
        parser.error(f"--clients takes positive numbers separated by commas, got {given!r}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    schedulers = ["batch", "serial"] if args.compare_schedulers else [args.scheduler]
    runs: dict[str, list[Level]] = {}
    described: dict[str, str] = {}
    for scheduler in schedulers:
        runs[scheduler], described[scheduler] = run_with(scheduler, args)
        print()
    if len(runs) == 2:
        print("batch against serial, aggregate tokens/s")
        print(f"  {'clients':>7s} {'batch':>8s} {'serial':>8s} {'ratio':>7s}")
        for batch, serial in zip(runs["batch"], runs["serial"], strict=True):
            print(
                f"  {batch.clients:7d} {batch.rate:8.1f} {serial.rate:8.1f}"
                f" {batch.rate / serial.rate:6.2f}x"
            )
        print()
    if args.vllm:
        gateway, about, alone = run_vllm(args)
        print()
        first = schedulers[0]
        report_backends(args, (described[first], runs[first]), (about, gateway))
        print("\npersona's own backend against vLLM alone (no gateway, the bare model), tokens/s")
        for mine, theirs in zip(runs[first], alone, strict=True):
            print(
                f"  {mine.clients:7d} clients: persona {mine.rate:7.1f}, vLLM alone "
                f"{theirs.rate:7.1f}, {mine.rate / theirs.rate:5.2f}x; TTFT p95 persona "
                f"{ttft(mine, 0.95):.3f} s, vLLM alone {ttft(theirs, 0.95):.3f} s"
            )
    return 0


def ttft(level: Level, fraction: float) -> float:
    return percentile([timed.first_token_s for _, timed in level.results], fraction)


def report_backends(
    args: argparse.Namespace, ours: tuple[str, list[Level]], gateway: tuple[str, list[Level]]
) -> None:
    """Both backends side by side, level by level: tokens/s and TTFT, and persona/vLLM. Each
    backend is (its description, its levels)."""
    persona, vllm = ours[1], gateway[1]
    print(
        "persona's own backend against persona in front of vLLM, the same requests, "
        f"max_tokens {args.max_tokens}, {args.requests_per_client} per client"
    )
    print(f"  persona: {ours[0]}\n  vLLM:    {gateway[0]}")
    groups = ("tokens/s", "ttft p50", "ttft p95")
    print(f"  {'':7s} {'':8s}" + "".join(f" | {name:^23s}" for name in groups) + " |")
    names = f" | {'persona':>7s} {'vLLM':>7s} {'ratio':>7s}"
    print(f"  {'clients':>7s} {'requests':>8s}" + names * len(groups) + f" | {'same text':>9s}")
    for mine, theirs in zip(persona, vllm, strict=True):
        cells = [f"{mine.rate:7.1f} {theirs.rate:7.1f} {mine.rate / theirs.rate:6.2f}x"]
        for fraction in (0.5, 0.95):
            a, b = ttft(mine, fraction), ttft(theirs, fraction)
            cells.append(f"{a:6.3f}s {b:6.3f}s {a / b:6.2f}x")
        texts = {key: timed.text for key, timed in theirs.results}
        same = sum(texts.get(key) == timed.text for key, timed in mine.results)
        print(
            f"  {mine.clients:7d} {len(mine.results):8d} | "
            + " | ".join(cells)
            + f" | {same:3d} of {len(mine.results):<3d}"
        )
    print(
        "  ratio: persona / vLLM (tokens/s above 1x: persona faster; TTFT above 1x: persona "
        "slower);\n  tokens per backend: "
        + ", ".join(f"{a.tokens} / {b.tokens}" for a, b in zip(persona, vllm, strict=True))
        + " (replies may end before max_tokens); same text: persona's reply = vLLM's"
    )


if __name__ == "__main__":
    sys.exit(main())
