"""A bounded load test of `persona serve`: mixed requests from many clients for a fixed time.

    python benchmarks/load.py [--seconds 60] [--clients 16] [--scheduler batch|serial]
                              [--max-queue 8] [--bursts N]

Starts `persona serve` (as benchmarks/serve.py does) and, for --seconds, has each client send one
request after another: chat completions streamed and not, and plain completions, each client its
own persona in turn, short and long max_tokens, some with a few turns of history. Now and then
(--bursts) the clients pause and one burst of rows + queue + --overflow requests goes out at once,
so that the queue limit refuses some with 429. Then the clients finish what they have in flight
and the test stops by itself.

Prints requests served, errors by kind (any error besides the bursts' 429s counts), p50/p95
latency and time to first token, and the server's /metrics at the end (active rows and queue
back to 0). Exits non-zero on any unexpected error.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import openai
from serve import (
    FOLLOW_UPS,
    GREEDY,
    QUESTIONS,
    ServerProcess,
    client_for,
    percentile,
    served_models,
    stop_on_sigterm,
)

from persona.cli.main import build_parser
from persona.engine.contract import DEFAULT_MAX_ROWS
from persona.engine.serial import ROWS as SERIAL_ROWS

ROWS = {"batch": DEFAULT_MAX_ROWS, "serial": SERIAL_ROWS}  # replies a scheduler runs at once
BURST_TOKENS = 4  # a burst's requests are short: they only need to hold their rows a moment
DRAIN_TIMEOUT_S = 300  # the longest the requests in flight at the end may take to finish
SETTLE_TIMEOUT_S = 10  # how long /metrics may take to show no active rows once all have ended


@dataclass
class Tally:
    """What the clients saw."""

    served: Counter[str] = field(default_factory=Counter)  # request kind -> answered
    errors: Counter[str] = field(default_factory=Counter)  # error kind -> count
    latency: dict[str, list[float]] = field(default_factory=dict)  # short | long -> seconds
    first_token: list[float] = field(default_factory=list)  # streamed requests
    tokens: int = 0
    seconds: float = 0.0
    burst_sent: int = 0
    burst_refused: int = 0  # 429 with a Retry-After header

    def error(self, kind: str) -> None:
        self.errors[kind] += 1


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"{type(exc).__name__} {exc.status_code}"
    return type(exc).__name__


async def one_request(
    client: openai.AsyncOpenAI, model: str, rng: random.Random, args: argparse.Namespace
) -> tuple[str, str, float, float | None, int]:
    """Send one request of a random kind; (kind, length, seconds, first-token seconds, tokens).
    Raises ValueError for a reply that breaks the API's promises."""
    kind = rng.choices(["chat stream", "chat", "completion"], weights=[4, 4, 2])[0]
    length = "long" if rng.random() < args.long_share else "short"
    max_tokens = args.long_tokens if length == "long" else args.short_tokens
    messages = [{"role": "user", "content": rng.choice(QUESTIONS)}]
    if rng.random() < 0.3:  # some carry a little history
        messages += [
            {"role": "assistant", "content": "Ay, and more besides."},
            {"role": "user", "content": rng.choice(FOLLOW_UPS)},
        ]
    start = time.perf_counter()
    first = None
    if kind == "chat stream":
        stream = await client.chat.completions.create(
            model=model,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=max_tokens,
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,  # type: ignore[arg-type]
        )
        finish, tokens = None, None
        async for chunk in stream:
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
            for choice in chunk.choices:
                if choice.delta.content and first is None:
                    first = time.perf_counter() - start
                finish = choice.finish_reason or finish
    elif kind == "chat":
        reply = await client.chat.completions.create(
            model=model,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=max_tokens,
            **GREEDY,  # type: ignore[arg-type]
        )
        if not isinstance(reply.choices[0].message.content, str):
            raise ValueError("chat reply without content")
        finish, tokens = (
            reply.choices[0].finish_reason,
            reply.usage and reply.usage.completion_tokens,
        )
    else:
        completion = await client.completions.create(
            model=model,
            prompt=f"{messages[0]['content']}\n",
            max_tokens=max_tokens,
            **GREEDY,  # type: ignore[arg-type]
        )
        finish = completion.choices[0].finish_reason
        tokens = completion.usage and completion.usage.completion_tokens
    seconds = time.perf_counter() - start
    if finish not in ("stop", "length"):
        raise ValueError(f"finish_reason {finish!r}")
    if tokens is None or tokens > max_tokens or (finish == "length" and tokens != max_tokens):
        raise ValueError(f"{tokens} completion tokens for max_tokens {max_tokens} ({finish})")
    return kind, length, seconds, first, tokens


class Gate:
    """Lets the clients run, or holds them while a burst goes out."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()
        self.in_flight = 0

    async def idle(self) -> None:
        """Close the gate and wait until no client request is in flight."""
        self.open.clear()
        while self.in_flight:
            await asyncio.sleep(0.05)


async def steady_client(
    index: int,
    client: openai.AsyncOpenAI,
    models: list[str],
    gate: Gate,
    deadline: float,
    tally: Tally,
    args: argparse.Namespace,
) -> None:
    rng = random.Random(index)
    turn = 0
    while True:
        await gate.open.wait()
        if time.monotonic() >= deadline:
            return
        model = models[(index + turn) % len(models)]
        turn += 1
        gate.in_flight += 1
        try:
            kind, length, seconds, first, tokens = await one_request(client, model, rng, args)
        except ValueError as exc:
            tally.error(f"bad reply: {exc}")
        except Exception as exc:  # noqa: BLE001 - every failure is counted, by kind
            tally.error(error_kind(exc))
        else:
            tally.served[kind] += 1
            tally.latency.setdefault(length, []).append(seconds)
            tally.tokens += tokens
            if first is not None:
                tally.first_token.append(first)
        finally:
            gate.in_flight -= 1


async def burst(
    client: openai.AsyncOpenAI, models: list[str], size: int, gate: Gate, tally: Tally
) -> None:
    """Hold the clients, then send `size` requests at once: more than rows + queue."""
    await gate.idle()

    async def one(index: int) -> None:
        try:
            reply = await client.chat.completions.create(
                model=models[index % len(models)],
                messages=[{"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}],
                max_tokens=BURST_TOKENS,
                stream=index % 2 == 1,
                **GREEDY,  # type: ignore[arg-type]
            )
            if isinstance(reply, openai.AsyncStream):
                async for _chunk in reply:
                    pass
        except openai.RateLimitError as exc:
            if exc.response.headers.get("retry-after"):
                tally.burst_refused += 1
            else:
                tally.error("429 without Retry-After")
        except Exception as exc:  # noqa: BLE001
            tally.error(f"burst: {error_kind(exc)}")

    try:
        tally.burst_sent += size
        await asyncio.gather(*(one(index) for index in range(size)))
    finally:
        gate.open.set()


async def load(server: ServerProcess, args: argparse.Namespace) -> Tally:
    models = served_models(server)
    client = client_for(server)
    tally = Tally()
    gate = Gate()
    start = time.monotonic()
    deadline = start + args.seconds
    clients = [
        asyncio.create_task(steady_client(index, client, models, gate, deadline, tally, args))
        for index in range(args.clients)
    ]
    size = ROWS[args.scheduler] + args.max_queue + args.overflow
    for number in range(1, args.bursts + 1):
        await asyncio.sleep(
            max(0.0, start + args.seconds * number / (args.bursts + 1) - time.monotonic())
        )
        await burst(client, models, size, gate, tally)
    done, pending = await asyncio.wait(
        clients, timeout=max(0.0, deadline - time.monotonic()) + DRAIN_TIMEOUT_S
    )
    for task in pending:
        task.cancel()
        tally.error("still in flight when the test ended")
    tally.seconds = time.monotonic() - start
    await client.close()
    return tally


def settled_metrics(server: ServerProcess) -> dict[str, str]:
    """The /metrics series once no row is active (or SETTLE_TIMEOUT_S has passed)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        series = {}
        for line in server.get("/metrics").splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                series[name] = value
        busy = float(series.get("persona_active_rows", 0)) + float(
            series.get("persona_queue_depth", 0)
        )
        if not busy or time.monotonic() > deadline:
            return series
        time.sleep(0.2)


def report(args: argparse.Namespace, server: ServerProcess, tally: Tally) -> bool:
    served = sum(tally.served.values())
    seconds = tally.seconds
    print(
        f"\n{served} requests served in {seconds:.0f} s by {args.clients} clients "
        f"({', '.join(f'{kind} {count}' for kind, count in sorted(tally.served.items()))}); "
        f"{tally.tokens} completion tokens, {tally.tokens / seconds:.1f} tokens/s"
    )
    for length in ("short", "long"):
        times = tally.latency.get(length, [])
        tokens = args.short_tokens if length == "short" else args.long_tokens
        print(
            f"  latency, {length} (max_tokens {tokens}): {len(times)} requests, "
            f"p50 {percentile(times, 0.5):.2f}s, p95 {percentile(times, 0.95):.2f}s"
        )
    firsts = tally.first_token
    print(
        f"  time to first token, streamed: p50 {percentile(firsts, 0.5):.2f}s, "
        f"p95 {percentile(firsts, 0.95):.2f}s"
    )
    print(
        f"  bursts: {args.bursts} of {tally.burst_sent // max(1, args.bursts)} requests, "
        f"{tally.burst_refused} refused with 429 + Retry-After (deliberate; at least "
        f"{args.overflow * args.bursts} expected)"
    )
    if tally.burst_refused < args.overflow * args.bursts:
        tally.error("a burst over the queue limit was not refused")
    if tally.errors:
        print("  errors:")
        for kind, count in tally.errors.most_common():
            print(f"    {count:5d}  {kind}")
    else:
        print("  errors: 0")

    series = settled_metrics(server)
    print("\n/metrics at the end:")
    for name, value in series.items():
        print(f"  {name} {value}")
    idle = series.get("persona_active_rows") == "0" and series.get("persona_queue_depth") == "0"
    refused = int(series.get('persona_requests_total{status="429"}', 0))
    print(f"  active rows and queue back to 0: {'yes' if idle else 'NO'}")
    print(f"  429s counted by the server: {refused}, by the clients: {tally.burst_refused}")
    return not tally.errors and idle and refused == tally.burst_refused


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long clients send")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--scheduler", choices=("batch", "serial"), default="batch")
    parser.add_argument(
        "--max-queue", type=int, help="the server's --max-queue (default: persona serve's)"
    )
    parser.add_argument("--short-tokens", type=int, default=8)
    parser.add_argument("--long-tokens", type=int, default=64)
    parser.add_argument("--long-share", type=float, default=0.3, help="share of long requests")
    parser.add_argument(
        "--bursts", type=int, help="bursts over the queue limit (default: one per 30 s, at least 1)"
    )
    parser.add_argument(
        "--overflow", type=int, default=4, help="requests per burst beyond rows + queue"
    )
    parser.add_argument("--precision", choices=("auto", "fp32", "int8"), default="auto")
    args = parser.parse_args(argv)
    if args.max_queue is None:
        args.max_queue = build_parser().parse_args(["serve"]).max_queue
    if args.bursts is None:
        args.bursts = max(1, int(args.seconds // 30))
    if args.seconds <= 0 or args.clients < 1 or args.bursts < 0 or args.overflow < 1:
        parser.error("--seconds, --clients and --overflow must be positive, --bursts 0 or more")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    flags = ["--scheduler", args.scheduler, "--max-queue", str(args.max_queue)]
    flags += ["--precision", args.precision]
    server = ServerProcess(flags)
    try:
        with server:
            print(f"persona serve: {server.description} at {server.url}")
            print(
                f"  {args.clients} clients for {args.seconds:g} s, max_tokens "
                f"{args.short_tokens} or {args.long_tokens}, queue limit {args.max_queue}"
            )
            tally = asyncio.run(load(server, args))
            ok = report(args, server, tally)
    finally:
        code = server.stop()
    stopped = code == 0 and "server stopped" in "".join(server.lines)
    print(f"  server stopped cleanly: {'yes' if stopped else f'NO (exit {code})'}")
    if not stopped:
        print(server.log_tail())
    return 0 if ok and stopped else 1


if __name__ == "__main__":
    sys.exit(main())
