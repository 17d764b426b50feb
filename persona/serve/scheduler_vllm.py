"""VllmScheduler: the serve contract (persona.serve.scheduler) on vLLM servers over HTTP.

persona stays the gateway: it renders each conversation with its own renderer, embeds the ids
with the model's own matrix, puts the persona's soft prompt in front (`prepend_prompt`), and
streams `[P ; E[ids]]` to a vLLM server as `prompt_embeds`. vLLM batches, pages the KV cache and
scales out. The token ids that come back are decoded here with persona's tokenizer and stream
decoder, so the text is exactly what persona's own engine makes of the same tokens; stop strings
are cut by the Generation, as for every scheduler.

The requests run as tasks on an event loop of this scheduler's own thread (the HTTP loop only
submits). Each goes to the live server with the fewest requests in flight; a server that cannot
be reached is marked down (its request goes to another while nothing was streamed yet) and is
taken back once it passes the start-up check again. A client that leaves cancels its task, which
closes the upstream stream: vLLM aborts the request.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from typing import Any

import httpx2 as httpx  # httpx, as huggingface_hub and openai install it

from persona.engine.backend import check_runs
from persona.engine.chat import ChatEngine
from persona.engine.detok import StreamDecoder
from persona.errors import ConfigError, PersonaError, first_line
from persona.prompt.softprompt import SoftPrompt
from persona.serve.metrics import TokenRate
from persona.serve.scheduler import Generation, Job, QueueFull
from persona.serve.vllm_upstream import Upstream, UpstreamUnreachable, check_upstream, choose
from persona.serve.vllm_wire import (
    COMPLETIONS,
    completion_body,
    encode_embeds,
    parse_event,
    prompt_embeds,
    refused,
)

UPSTREAM_ROWS = 256  # requests a vLLM server runs at once by default (its --max-num-seqs)
CANCEL_POLL_S = 0.1  # how often the loop looks for clients that left
RECHECK_S = 5.0  # how often a server marked down is checked again
CLOSE_WAIT_S = 10.0
CONNECT_TIMEOUT_S = 5.0


class NoUpstream(QueueFull):
    """No vLLM server can take the request now (a 503 to the client)."""


class _Unreachable(Exception):
    """The server could not be reached before anything of the reply came: try another."""


class VllmScheduler:
    def __init__(
        self,
        engine: ChatEngine,
        upstreams: list[Upstream],
        *,
        dtype: str = "float32",
        max_queue: int = 16,
        recheck: Callable[[str], Upstream] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if not upstreams:
            raise ConfigError("the vLLM scheduler needs at least one server")
        if max_queue < 0:
            raise ConfigError(f"max_queue={max_queue!r} must be 0 or more")
        self.engine = engine
        self.upstreams = upstreams
        self.dtype = dtype
        self.max_queue = max_queue
        self.rate = TokenRate()
        self.requests_total = 0
        lengths = [u.max_model_len for u in upstreams if u.alive and u.max_model_len]
        if lengths:  # the window is the smallest server's
            engine.max_context = min(engine.max_context, *lengths)
        self._recheck = recheck or (lambda url: check_upstream(url, engine, dtype))
        self._log = log or (lambda line: print(f"persona: {line}", file=sys.stderr, flush=True))
        self._lock = threading.Lock()
        self._in_flight = 0  # submitted, not finished
        self._closed = False
        self._active: dict[asyncio.Task[Any], Generation] = {}  # touched on the loop only
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="persona-vllm", daemon=True
        )
        self._thread.start()
        self._client: httpx.AsyncClient | None = None
        self._chores: list[asyncio.Task[Any]] = []
        asyncio.run_coroutine_threadsafe(self._open(), self._loop).result()

    # ---- the contract ---------------------------------------------------------------------------

    def submit(self, job: Job) -> Generation:
        ids = self._prompt_ids(job)  # a conversation too long is refused here, with a 400
        generation = Generation(job.stop)
        with self._lock:
            if self._closed:
                raise QueueFull("the server is shutting down", retry_after_s=1)
            alive = sum(upstream.alive for upstream in self.upstreams)
            if alive and self._in_flight >= alive * UPSTREAM_ROWS + self.max_queue:
                raise QueueFull(
                    f"{self._in_flight} requests are in flight on {alive} vLLM servers (queue "
                    f"limit {self.max_queue}); retry in a moment",
                    retry_after_s=1,
                )
            if not alive:
                generation.fail(NoUpstream(self._none_alive()))
                return generation
            self._in_flight += 1
            self.requests_total += 1
        asyncio.run_coroutine_threadsafe(self._run(job, ids, generation), self._loop)
        return generation

    def metrics(self) -> dict[str, float]:
        with self._lock:
            in_flight = self._in_flight
        alive = sum(upstream.alive for upstream in self.upstreams)
        return {
            "queue_depth": float(max(0, in_flight - alive * UPSTREAM_ROWS)),
            "active_rows": float(in_flight),
            "tokens_total": float(self.rate.total),
            "requests_total": float(self.requests_total),
            "tokens_per_second": self.rate.per_second(),
            "upstreams_alive": float(alive),
        }

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._shut(), self._loop).result(CLOSE_WAIT_S)
        except Exception:  # noqa: BLE001 - closing goes on whatever a task left behind
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=CLOSE_WAIT_S)

    # ---- one request ----------------------------------------------------------------------------

    def _prompt_ids(self, job: Job) -> list[int]:
        """The token ids after the soft prompt, fitted to the window as the engine fits them."""
        persona, config = job.persona, job.config
        if persona is not None:
            check_runs(persona, self.engine.loaded.fingerprint, None, "vllm")
        if job.raw_prompt is None:
            ids, _ = self.engine.fit_window(
                job.messages, persona, job.system, config.max_new_tokens
            )
            return ids
        ids = list(self.engine.tokenizer.encode(job.raw_prompt, add_special_tokens=False))
        if not ids:
            raise ConfigError("prompt is empty; send some text to continue")
        virtual = persona.num_virtual_tokens if persona is not None else 0
        budget = self.engine.max_context - virtual - config.max_new_tokens
        if len(ids) > budget:
            raise ConfigError(
                f"the prompt is {len(ids)} tokens, more than the {budget} that fit the model's "
                f"window ({self.engine.max_context} tokens, {config.max_new_tokens} kept for the "
                "reply); shorten it or lower max_tokens"
            )
        return ids

    async def _run(self, job: Job, ids: list[int], generation: Generation) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._active[task] = generation
        persona = job.persona
        prompt_tokens = len(ids) + (persona.num_virtual_tokens if persona is not None else 0)
        reply = _Reply(generation, StreamDecoder(self.engine.tokenizer), self)
        try:
            # megabytes for a long conversation on a wide model: off this loop, which streams
            encoded = await asyncio.get_running_loop().run_in_executor(
                None, self._encode, ids, persona
            )
            body = completion_body("", encoded, job.config, self.engine.stop_ids)
            tried: set[str] = set()
            while True:
                candidates = [u for u in self.upstreams if u.url not in tried]
                upstream = choose(candidates)
                if upstream is None:
                    generation.fail(NoUpstream(self._none_alive()))
                    return
                tried.add(upstream.url)
                try:
                    await self._stream(upstream, {**body, "model": upstream.served_name}, reply)
                except _Unreachable as exc:
                    self._mark_down(upstream, str(exc))
                    continue
                break
            reply.end()
            generation.finish(prompt_tokens, reply.produced, reply.reason)
        except asyncio.CancelledError:
            if self._closed:
                generation.fail(QueueFull("the server is shutting down"))
            elif not generation.done:
                reply.end()
                generation.finish(prompt_tokens, reply.produced, "cancelled")
        except PersonaError as exc:
            generation.fail(exc)
        except Exception as exc:  # noqa: BLE001 - a bug fails its request, not the server
            generation.fail(PersonaError(f"generation failed: {first_line(exc)}"))
        finally:
            del self._active[task]
            with self._lock:
                self._in_flight -= 1

    def _encode(self, ids: list[int], persona: SoftPrompt | None) -> str:
        embeds = prompt_embeds(
            self.engine.backend.embed(ids),  # (T, D)
            persona.embeddings if persona is not None else None,  # (N, D)
        )  # (N+T, D)
        return encode_embeds(embeds, self.dtype)

    async def _stream(self, upstream: Upstream, body: dict[str, Any], reply: _Reply) -> None:
        """Stream one completion from `upstream` into `reply`; returns early once the reply
        should stop (a stop string, or the client left)."""
        assert self._client is not None
        upstream.in_flight += 1
        upstream.picked += 1
        try:
            async with self._client.stream(
                "POST", f"{upstream.url}{COMPLETIONS}", json=body
            ) as response:
                if response.status_code != 200:
                    raise refused(response.status_code, await response.aread(), upstream.url)
                async for line in response.aiter_lines():
                    event = parse_event(line)
                    if event is None:
                        continue
                    if "error" in event:
                        raise refused(500, line[len("data:") :], upstream.url)
                    if not reply.take(event):
                        return
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise _Unreachable(first_line(exc)) from None
        except httpx.HTTPError as exc:  # it went away mid-request
            if reply.produced == 0 and not reply.generation.stopping.is_set():
                raise _Unreachable(first_line(exc)) from None
            self._mark_down(upstream, first_line(exc))
            raise PersonaError(
                f"the vLLM server at {upstream.url} went away mid-reply: {first_line(exc)}"
            ) from None
        finally:
            upstream.in_flight -= 1

    # ---- servers that go and come back ----------------------------------------------------------

    def _mark_down(self, upstream: Upstream, why: str) -> None:
        if upstream.alive:
            upstream.alive = False
            upstream.last_error = why
            self._log(f"the vLLM server at {upstream.url} is down ({why}); checking it again")

    def _none_alive(self) -> str:
        urls = ", ".join(upstream.url for upstream in self.upstreams)
        return f"no vLLM server is reachable ({urls}); retry once one is back"

    async def _open(self) -> None:
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT_S),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )
        self._chores = [
            asyncio.create_task(self._cancel_departed()),
            asyncio.create_task(self._bring_back()),
        ]

    async def _cancel_departed(self) -> None:
        while True:
            await asyncio.sleep(CANCEL_POLL_S)
            for task, generation in list(self._active.items()):
                if generation.stopping.is_set() and not task.done():
                    task.cancel()  # closes the upstream stream: vLLM aborts the request

    async def _bring_back(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(RECHECK_S)
            for upstream in [u for u in self.upstreams if not u.alive]:
                try:
                    fresh = await loop.run_in_executor(None, self._recheck, upstream.url)
                except PersonaError as exc:
                    if str(exc) != upstream.last_error and not isinstance(exc, UpstreamUnreachable):
                        self._log(f"{first_line(exc)}; it stays out")  # up again, but refused
                    upstream.last_error = str(exc)
                    continue
                upstream.served_name, upstream.root = fresh.served_name, fresh.root
                if fresh.max_model_len:
                    self.engine.max_context = min(self.engine.max_context, fresh.max_model_len)
                upstream.alive, upstream.last_error = True, ""
                self._log(f"the vLLM server at {upstream.url} is serving")

    async def _shut(self) -> None:
        for chore in self._chores:
            chore.cancel()
        tasks = list(self._active)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, *self._chores, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()


class _Reply:
    """The token ids vLLM streams for one request, decoded into its Generation."""

    def __init__(
        self, generation: Generation, decoder: StreamDecoder, scheduler: VllmScheduler
    ) -> None:
        self.generation = generation
        self.decoder = decoder
        self.scheduler = scheduler
        self.produced = 0  # tokens of the reply, the end-of-turn token excluded
        self.reason = "stop"
        self._ended = False

    def take(self, event: dict[str, Any]) -> bool:
        """One streamed event; False once the reply should stop."""
        for choice in event.get("choices") or []:
            if choice.get("finish_reason"):
                self.reason = "length" if choice["finish_reason"] == "length" else "stop"
            token_ids = choice.get("token_ids")
            if token_ids is None:  # a vLLM that does not return ids: its own text
                self.produced += 1 if choice.get("text") else 0
                if choice.get("text") and not self.generation.emit(choice["text"]):
                    return False
                continue
            for token in token_ids:
                if token in self.scheduler.engine.stop_ids:
                    continue  # vLLM returns the end-of-turn token; persona's engine does not
                self.produced += 1
                self.scheduler.rate.add(1)
                piece = self.decoder.push(int(token))
                if piece and not self.generation.emit(piece):
                    return False
        return not self.generation.stopping.is_set()

    def end(self) -> None:
        """Characters the decoder held back while they could still change."""
        if self._ended:
            return
        self._ended = True
        tail = self.decoder.finish()
        if tail:
            self.generation.emit(tail)
