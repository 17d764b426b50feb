"""Continuous batching of mixed personas: many conversations decode together, joining and leaving
between steps.

One thread owns the model. Each turn of its loop:
1. drops the rows whose client went away (`Ticket.cancel`), and admits waiting requests while there
   is room (`max_rows`), each as a row (persona.engine.rows) whose cache starts from the longest
   cached prefix of the same persona (the prefix cache below), so a follow-up turn of a conversation
   only encodes what is new;
2. encodes waiting prompts, oldest first, `prefill_chunk` tokens in all: a long prompt joins over
   several turns, and the rows already decoding wait at most one chunk for their next token; a
   prompt fully encoded gives its first token at once (its client does not wait for the other
   prompts of the turn), and the row joins the decoding rows;
3. chooses every decoding row's next token (each with its own sampling settings), hands the text to
   the row's sink, and runs one decode step for all rows that go on (one batched forward).

A finished row's cache goes to the prefix cache, an LRU keyed by persona and token ids, bounded in
bytes. Each row computes what it would alone: its own persona, cache, positions and sampler.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass

from persona.engine import cores
from persona.engine.backend import AnyBackend, Cache
from persona.engine.chat import ChatEngine
from persona.engine.contract import (
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_ROWS,
    SHUTTING_DOWN,
    Request,
    Sink,
    Ticket,
    deliver,
    prompt_tokens,
    queue_full,
    watch_stops,
)
from persona.engine.detok import StreamDecoder
from persona.engine.rate import TokenRate
from persona.engine.rows import BareRow, Row, advance, common_prefix, prefill_bare
from persona.errors import ConfigError, PersonaError, QueueFull, first_line

DEFAULT_PREFILL_CHUNK = 256  # tokens a turn encodes: how long joining prompts hold up the rest
DEFAULT_PREFIX_CACHE_BYTES = 512 * 1024 * 1024


@dataclass
class _Active:
    ticket: Ticket
    row: Row
    key: str  # persona sha256, "" for none
    decoder: StreamDecoder
    pending: int | None = None  # a token chosen and sent, not yet run through the model


@dataclass
class _Cached:
    key: str
    ids: list[int]
    prompt_length: int
    cache: Cache
    nbytes: int


class PrefixCache:
    """KV caches of finished rows, by persona and token ids; least recently used leaves first."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.hits = 0
        self._entries: OrderedDict[int, _Cached] = OrderedDict()
        self._next = 0

    def take(self, key: str, ids: Sequence[int]) -> tuple[Cache, int] | None:
        """The cached entry of persona `key` that `ids` continues, removed from the cache, and the
        length of the prefix they share; None where there is none.

        An entry is taken only when the request continues its prompt (the reply after it may come
        back re-tokenized differently): a request that merely shares the chat template's first
        tokens would otherwise crop another conversation's cache down to them."""
        best, best_common = None, 0
        for handle, entry in self._entries.items():
            if entry.key != key:
                continue
            common = common_prefix(entry.ids, ids)
            if common > best_common and common >= entry.prompt_length:
                best, best_common = handle, common
        if best is None:
            return None
        entry = self._entries.pop(best)
        self.nbytes -= entry.nbytes
        self.hits += 1
        return entry.cache, best_common

    def put(self, key: str, ids: list[int], prompt_length: int, cache: Cache, nbytes: int) -> None:
        """Keep `cache`, which holds `ids` after persona `key`'s soft prompt; the first
        `prompt_length` of them were the request's prompt, the rest its reply."""
        if nbytes > self.max_bytes:
            return
        self._entries[self._next] = _Cached(key, ids, prompt_length, cache, nbytes)
        self._next += 1
        self.nbytes += nbytes
        while self.nbytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.nbytes -= evicted.nbytes

    def __len__(self) -> int:
        return len(self._entries)


class Scheduler:
    """Continuous batching over `engine`'s backend; see the module docstring."""

    def __init__(
        self,
        engine: ChatEngine,
        *,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_queue: int = DEFAULT_MAX_QUEUE,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
        prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES,
    ) -> None:
        if max_queue < 0:
            raise ConfigError(f"max_queue={max_queue!r} must be 0 or more")
        if max_rows < 1:
            raise ConfigError(f"max_rows={max_rows!r} must be 1 or more")
        self.engine = engine
        self.backend: AnyBackend = engine.backend
        self.name = self.backend.name
        self.layout = self.backend.layout
        self.max_rows = max(1, min(max_rows, self.backend.max_rows))  # llama.cpp: one at a time
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk
        self.prefix_cache = PrefixCache(prefix_cache_bytes)
        self.rate = TokenRate()
        self.requests_total = 0
        self._waiting: deque[Ticket] = deque()
        self._encoding: list[_Active] = []  # admitted, prompt not fully in the cache yet
        self._decoding: list[_Active] = []
        self._wake = threading.Condition()
        self._closed = False
        self._threads = cores.threads_now()  # what the loop's thread takes (persona.engine.cores)
        self._thread = threading.Thread(target=self._run, name="persona-scheduler", daemon=True)
        self._thread.start()

    # ---- public ---------------------------------------------------------------------------------

    def submit(
        self, request: Request, sink: Sink, cancelled: threading.Event | None = None
    ) -> Ticket:
        """Queue a request; its text goes to `sink` from the scheduler's thread (the contract of
        persona.engine.contract). Raises QueueFull, or the request's own refusal."""
        self.engine.prepare(request)  # here, so that a conversation too long is refused at once
        cancelled = cancelled if cancelled is not None else threading.Event()
        ticket = Ticket(request, watch_stops(request, sink, cancelled), cancelled)
        with self._wake:
            if self._closed:
                raise QueueFull(SHUTTING_DOWN)
            free_rows = self.max_rows - len(self._encoding) - len(self._decoding)
            if len(self._waiting) >= self.max_queue + max(0, free_rows):  # a free row is no wait
                raise queue_full(len(self._waiting), self.max_queue)
            self._waiting.append(ticket)
            self.requests_total += 1
            self._wake.notify()
        return ticket

    def metrics(self) -> dict[str, float]:
        with self._wake:
            return {
                "queue_depth": float(len(self._waiting)),
                "active_rows": float(len(self._encoding) + len(self._decoding)),
                "tokens_total": float(self.rate.total),
                "requests_total": float(self.requests_total),
                "tokens_per_second": self.rate.per_second(),
                "prefix_cache_bytes": float(self.prefix_cache.nbytes),
                "prefix_cache_hits": float(self.prefix_cache.hits),
            }

    def persona_kv(self, sha256: str) -> bytes | None:
        return None  # the model runs here (or on the server asked): nothing fetches keys from it

    def close(self) -> None:
        """Stop the loop; requests still waiting or running fail as refused (retry elsewhere)."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=30)

    # ---- the loop -------------------------------------------------------------------------------

    def _run(self) -> None:
        cores.take(self._threads)
        while True:
            with self._wake:
                while not self._closed and not (self._waiting or self._encoding or self._decoding):
                    self._wake.wait()
                if self._closed:
                    stopped = [*self._waiting, *(a.ticket for a in self._encoding + self._decoding)]
                    self._waiting.clear()
                    self._encoding, self._decoding = [], []
                    break
                left, left_waiting = self._take_cancelled()
                admitted = self._admit()
            for active in left:
                active.row.finish_reason = "cancelled"
                self._finish(active)
            for ticket in left_waiting:
                deliver(ticket, "finish", "cancelled", 0, 0)
            for ticket in admitted:
                self._start(ticket)
            self._prefill_some()
            self._decode_step()
        for ticket in stopped:
            deliver(ticket, "error", QueueFull(SHUTTING_DOWN))

    def _take_cancelled(self) -> tuple[list[_Active], list[Ticket]]:
        """Rows and waiting requests whose client went away, removed (call with the lock held)."""
        left = [a for a in self._encoding + self._decoding if a.ticket.cancelled.is_set()]
        self._encoding = [a for a in self._encoding if a not in left]
        self._decoding = [a for a in self._decoding if a not in left]
        left_waiting = [t for t in self._waiting if t.cancelled.is_set()]
        for ticket in left_waiting:
            self._waiting.remove(ticket)
        return left, left_waiting

    def _admit(self) -> list[Ticket]:
        room = self.max_rows - len(self._encoding) - len(self._decoding)
        taken = []
        while room > 0 and self._waiting:
            taken.append(self._waiting.popleft())
            room -= 1
        return taken

    def _start(self, ticket: Ticket) -> None:
        request = ticket.request
        ids = list(request.ids or [])
        key = request.persona.sha256 if request.persona is not None else ""
        num_virtual = request.persona.num_virtual_tokens if request.persona is not None else 0
        try:
            found = self.prefix_cache.take(key, ids)
            cache, held = self.backend.new_cache(), []
            if found is not None:
                reused, common = found
                common = min(common, len(ids) - 1)  # at least one token runs, to give logits
                # a backend with one sequence (llama.cpp) may have lost what the cache held
                if reused.get_seq_length() >= num_virtual + common:
                    self.backend.crop(reused, num_virtual + common)
                    cache, held = reused, ids[:common]
            row = Row(
                cache, held, ids, request.config, self.engine.stop_ids, device=self.backend.device
            )
            if request.bare_ids is not None and request.persona is not None:
                row.bare = self._bare_row(request.bare_ids)
        except Exception as exc:  # noqa: BLE001 - this request fails, the others go on
            deliver(ticket, "error", _failure(exc))
            return
        active = _Active(ticket, row, key, StreamDecoder(self.engine.tokenizer))
        with self._wake:
            self._encoding.append(active)

    def _bare_row(self, ids: list[int]) -> BareRow:
        """A guided row's bare companion, from the no-persona entries of the prefix cache."""
        found = self.prefix_cache.take("", ids)
        if found is not None:
            reused, common = found
            common = min(common, len(ids) - 1)
            if reused.get_seq_length() >= common:
                self.backend.crop(reused, common)
                return BareRow(reused, ids[:common], ids)
        return BareRow(self.backend.new_cache(), [], ids)

    def _prefill_some(self) -> None:
        """Encode waiting prompts, oldest first, up to `prefill_chunk` tokens in all this turn."""
        budget = self.prefill_chunk
        for active in list(self._encoding):
            if budget <= 0:
                break
            row = active.row
            prompt = row.prompt
            chunk = prompt[len(row.ids) : len(row.ids) + budget]
            persona = active.ticket.request.persona
            empty = row.cache.get_seq_length() == 0  # a reused cache may hold just the prompt
            embeddings = persona.embeddings if persona is not None and empty else None
            kind = persona.kind if persona is not None else "soft"
            try:
                row.logits = self.backend.prefill(row.cache, chunk, embeddings, kind=kind)
            except Exception as exc:  # noqa: BLE001 - this request fails, the others go on
                with self._wake:
                    self._encoding.remove(active)
                deliver(active.ticket, "error", _failure(exc))
                continue
            row.ids.extend(chunk)
            budget -= len(chunk)
            if len(row.ids) == len(prompt):
                try:
                    prefill_bare(self.backend, row)
                except Exception as exc:  # noqa: BLE001 - this request fails, the others go on
                    with self._wake:
                        self._encoding.remove(active)
                    deliver(active.ticket, "error", _failure(exc))
                    continue
                with self._wake:
                    self._encoding.remove(active)
                self._first_token(active)

    def _first_token(self, active: _Active) -> None:
        """A row whose prompt is encoded: its first token chosen and sent now; the row then
        decodes with the others (that token is run through the model at the next step)."""
        try:
            token = active.row.choose()
        except Exception as exc:  # noqa: BLE001 - sampling failed: this request fails
            deliver(active.ticket, "error", _failure(exc))
            return
        with self._wake:  # counted before the client hears of it
            self.rate.add(int(token is not None))
            if not active.row.finished:
                active.pending = token
                self._decoding.append(active)
        self._send(active, token)
        if active.row.finished:
            self._finish(active)

    def _send(self, active: _Active, token: int | None) -> None:
        if token is not None:
            piece = active.decoder.push(token)
            if piece:
                deliver(active.ticket, "piece", piece)

    def _decode_step(self) -> None:
        if not self._decoding:
            return
        chosen: list[tuple[_Active, int | None, bool]] = []  # (row, token, chosen now)
        try:
            for active in self._decoding:
                if active.pending is None:
                    chosen.append((active, active.row.choose(), True))
                else:  # a row that has just joined: its first token is chosen and sent already
                    chosen.append((active, active.pending, False))
        except Exception as exc:  # noqa: BLE001 - sampling failed: these rows cannot go on
            self._fail_decoding(exc)
            return
        produced = sum(token is not None and fresh for _, token, fresh in chosen)
        with self._wake:  # counted before any client hears of its tokens
            self.rate.add(produced)
            self._decoding = [active for active, _, _ in chosen if not active.row.finished]
        going: list[tuple[_Active, int]] = []
        for active, token, fresh in chosen:
            active.pending = None
            if fresh:
                self._send(active, token)
            if active.row.finished:
                self._finish(active)
            else:
                going.append((active, token))  # type: ignore[arg-type]
        if not going:
            return
        try:
            advance(self.backend, [a.row for a, _ in going], [t for _, t in going])
        except Exception as exc:  # noqa: BLE001 - the step failed: these rows cannot go on
            self._fail_decoding(exc)

    def _finish(self, active: _Active) -> None:
        """Pass on the reply's end; keep its cache for the conversation's next turn."""
        row = active.row
        # (persona key, row) whose caches may serve a later request
        kept: list[tuple[str, Row | BareRow]] = [(active.key, row)]
        if row.bare is not None:
            kept.append(("", row.bare))  # the bare row is the conversation with no persona
        for key, held in kept:
            if len(held.ids) < len(held.prompt):  # only a cache that holds the whole prompt
                continue
            try:
                nbytes = self.backend.cache_bytes(held.cache)
                self.prefix_cache.put(key, list(held.ids), len(held.prompt), held.cache, nbytes)
            except Exception:  # noqa: BLE001, S110 - a cache not kept only costs a later prefill
                pass
        tail = active.decoder.finish()  # characters held back while they could still change
        if tail:
            deliver(active.ticket, "piece", tail)
        request = active.ticket.request
        deliver(
            active.ticket, "finish", row.finish_reason, prompt_tokens(request), len(row.token_ids)
        )

    def _fail_decoding(self, exc: BaseException) -> None:
        with self._wake:
            failed, self._decoding = self._decoding, []
        for active in failed:
            deliver(active.ticket, "error", _failure(exc))


def _failure(exc: BaseException) -> PersonaError:
    """What a client hears of an exception in the model's computation: a PersonaError as it is,
    anything else as one line."""
    if isinstance(exc, PersonaError):
        return exc
    return PersonaError(f"{type(exc).__name__}: {first_line(exc)}")
