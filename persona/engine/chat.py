"""ChatEngine: `[soft prompt ; rendered history]` through the frozen model, reply streamed as text.

The KV cache of the prefix is kept between turns, so a new turn only runs its new tokens. The
soft prompt sits in front of everything, so each persona has its own cache; they live in a small
LRU, and switching back to a persona used earlier only runs the turns added since.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from persona.engine.backend import AnyBackend, Cache, backend_for, check_runs
from persona.engine.config import GenerationConfig
from persona.engine.contract import Request
from persona.engine.detok import StreamDecoder
from persona.engine.rows import BareRow, Row, advance, common_prefix, prefill_bare
from persona.errors import ConfigError
from persona.model.loader import LoadedModel
from persona.prompt.render import Message, Renderer
from persona.prompt.softprompt import SoftPrompt

END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>", "</s>")
PREFILL_CHUNK = 128  # tokens per forward pass when encoding history: bounds how long a cancel waits
DEFAULT_MAX_CONTEXT = 4096  # tokens; the model's own window is used when it is smaller


@dataclass
class GenerationStats:
    prompt_tokens: int = 0  # rendered conversation tokens (after the soft prompt)
    reused_tokens: int = 0  # of those, already in the KV cache
    new_tokens: int = 0  # generated
    first_token_seconds: float = 0.0
    seconds: float = 0.0
    finish_reason: str = ""  # stop | length | cancelled
    dropped_messages: int = 0  # oldest turns left out to fit the context window
    token_ids: list[int] = field(default_factory=list)  # the reply's tokens, stop token excluded

    @property
    def tokens_per_second(self) -> float:
        decode = self.seconds - self.first_token_seconds
        return (self.new_tokens - 1) / decode if self.new_tokens > 1 and decode > 0 else 0.0


@dataclass
class _PrefixCache:
    cache: Cache  # [soft prompt ; ids]
    ids: list[int] = field(default_factory=list)  # tokens held after the virtual tokens


class ChatEngine:
    """One conversation at a time through a backend (persona.engine.backend), caches kept per persona."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        cache_size: int = 4,
        max_context: int = DEFAULT_MAX_CONTEXT,
        backend: AnyBackend | None = None,
    ) -> None:
        self.loaded = loaded
        self.backend = backend if backend is not None else backend_for(loaded)
        self.tokenizer = loaded.tokenizer
        self.renderer = Renderer(loaded.tokenizer)
        self.cache_size = cache_size
        self.max_context = min(max_context, loaded.context_length)
        self.stop_ids = stop_token_ids(loaded)
        self.last = GenerationStats()
        self._caches: OrderedDict[str, _PrefixCache] = OrderedDict()
        self._lock = threading.Lock()

    # ---- public ---------------------------------------------------------------------------------

    def stream(
        self,
        messages: Sequence[Message],
        persona: SoftPrompt | None = None,
        config: GenerationConfig | None = None,
        *,
        system: str | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[str]:
        """Yield the reply to `messages` piece by piece; stats of the call end up in `self.last`."""
        if not messages or not messages[-1]["content"].strip():
            raise ConfigError("the message is empty; type something to send")
        request = Request(messages, persona, config or GenerationConfig(), system)
        self.prepare(request)
        yield from self.run(request, cancel=cancel)

    def run(self, request: Request, *, cancel: threading.Event | None = None) -> Iterator[str]:
        """Yield the reply to a prepared request (`prepare` filled in its ids) piece by piece,
        one at a time; stats of the call end up in `self.last`."""
        if request.ids is None:
            raise ValueError("prepare the request first: its ids are not known")
        with self._lock:
            yield from self._generate(request, cancel)

    def reply(
        self,
        messages: Sequence[Message],
        persona: SoftPrompt | None = None,
        config: GenerationConfig | None = None,
        **kwargs: object,
    ) -> str:
        """The whole reply as one string."""
        return "".join(self.stream(messages, persona, config, **kwargs))  # type: ignore[arg-type]

    def check_persona(self, persona: SoftPrompt) -> None:
        """Refuse, in one line, a persona for another model or of a kind this backend cannot run."""
        check_runs(persona, self.loaded.fingerprint, self.backend.layout, self.backend.name)

    def prompt_text(
        self,
        messages: Sequence[Message],
        persona: SoftPrompt | None = None,
        *,
        system: str | None = None,
    ) -> str:
        """The exact text that follows the soft prompt for this call (what --json reports)."""
        return self.renderer.text(messages, persona, system=system)

    def window_budget(self, persona: SoftPrompt | None, max_new_tokens: int) -> int:
        """How many token ids may follow the soft prompt, with room kept for the reply."""
        num_virtual = persona.num_virtual_tokens if persona is not None else 0
        return self.max_context - num_virtual - max_new_tokens

    def fit_window(
        self,
        messages: Sequence[Message],
        persona: SoftPrompt | None,
        system: str | None,
        max_new_tokens: int,
    ) -> tuple[list[int], int]:
        """(token ids after the soft prompt, turns dropped): the conversation rendered, dropping the
        oldest turns (never the system message or the last one) until it fits the window.

        Turns are dropped a user turn and its reply at a time, oldest first. Fewer turns never
        render longer, so the fewest drops that fit are found by bisection: a handful of renders
        for a conversation of thousands of turns, where one render per dropped turn took seconds."""
        ids, dropped, _ = self._fit(messages, persona, system, max_new_tokens)
        return ids, dropped

    def _fit(
        self,
        messages: Sequence[Message],
        persona: SoftPrompt | None,
        system: str | None,
        max_new_tokens: int,
    ) -> tuple[list[int], int, list[Message]]:
        """fit_window's (ids, turns dropped) and the messages kept, system message included."""
        budget = self.window_budget(persona, max_new_tokens)
        system_messages = [m for m in messages if m["role"] == "system"][:1]
        turns = [m for m in messages if m["role"] != "system"]
        starts = [0]  # where the kept turns start after each drop
        while len(turns) - starts[-1] > 1:
            rest = turns[starts[-1] :]
            starts.append(starts[-1] + (2 if len(rest) > 2 and rest[0]["role"] == "user" else 1))

        rendered: dict[int, list[int]] = {}

        def render(dropped: int) -> list[int]:  # the ids with the first `dropped` drops made
            if dropped not in rendered:
                kept = turns[starts[dropped] :]
                rendered[dropped] = self.renderer.render(
                    [*system_messages, *kept], persona, system=system
                )
            return rendered[dropped]

        if len(render(0)) <= budget:
            return render(0), 0, [*system_messages, *turns]
        most = len(starts) - 1
        if len(render(most)) > budget:
            raise ConfigError(
                f"the message is {len(render(most))} tokens with its prompt, more than the "
                f"{budget} that fit the model's window ({self.max_context} tokens, "
                f"{max_new_tokens} kept for the reply); shorten it or lower max_tokens"
            )
        low, high = 1, most  # render(high) fits, render(low - 1) does not
        while low < high:
            middle = (low + high) // 2
            if len(render(middle)) <= budget:
                high = middle
            else:
                low = middle + 1
        return render(high), high, [*system_messages, *turns[starts[high] :]]

    def prepare(self, request: Request) -> tuple[list[int], int]:
        """Check a request and fill in `request.ids`, the token ids that follow its persona's
        prompt: its conversation rendered and fitted to the window, or its raw text tokenised.
        Every runner calls this on submit, so a request that cannot run is refused at once.
        Returns (the ids, how many of the oldest turns were left out to fit)."""
        if request.persona is not None:
            self.check_persona(request.persona)
        guided = request.persona is not None and request.config.guided
        if guided and self.backend.max_rows < 2:
            raise ConfigError(
                f"strength={request.config.strength:g} needs a backend that decodes a bare row "
                f"beside the persona's (--backend torch); the {self.backend.name} backend does "
                "not: leave strength at 1"
            )
        request.bare_ids, request.dropped = None, 0
        max_new = request.config.max_new_tokens
        if request.text is None and request.ids is not None:  # token ids given as they are
            ids = list(request.ids)
        elif request.text is None:
            if not request.messages:
                raise ConfigError("the conversation is empty; send at least one message")
            request.ids, dropped, kept = self._fit(
                request.messages, request.persona, request.system, max_new
            )
            request.dropped = dropped
            if guided:
                request.bare_ids = self._bare_ids(
                    self.renderer.render(kept, None, system=request.system), max_new
                )
            return request.ids, dropped
        else:
            ids = list(self.tokenizer.encode(request.text, add_special_tokens=False))
        if not ids:
            raise ConfigError("prompt is empty; send some text to continue")
        budget = self.window_budget(request.persona, max_new)
        if len(ids) > budget:
            raise ConfigError(
                f"the prompt is {len(ids)} tokens, more than the {budget} that fit the model's "
                f"window ({self.max_context} tokens, {max_new} kept for the reply); shorten it "
                "or lower max_tokens"
            )
        request.ids = ids
        if guided:
            request.bare_ids = list(ids)  # a raw text has no system message to leave out
        return ids, 0

    def _bare_ids(self, ids: list[int], max_new_tokens: int) -> list[int]:
        """The bare rendering, refused in one line where it does not fit the window."""
        budget = self.window_budget(None, max_new_tokens)
        if len(ids) > budget:
            raise ConfigError(
                f"the conversation without its persona is {len(ids)} tokens, more than the "
                f"{budget} that fit the model's window; shorten it or use strength 1"
            )
        return ids

    def clear_cache(self) -> None:
        self._caches.clear()

    # ---- internals ------------------------------------------------------------------------------

    def _generate(self, request: Request, cancel: threading.Event | None) -> Iterator[str]:
        start = time.perf_counter()
        stats = GenerationStats(dropped_messages=request.dropped)
        self.last = stats
        persona, config = request.persona, request.config
        ids = list(request.ids or [])
        num_virtual = request.num_virtual_tokens
        stats.prompt_tokens = len(ids)
        entry = self._cache_for(persona)
        common = common_prefix(entry.ids, ids)
        if entry.cache.get_seq_length() < num_virtual + common:
            common = 0  # the cache lost what it held (a backend with one sequence served another)
        common = min(common, len(ids) - 1)  # always run at least one token, to get logits
        stats.reused_tokens = common
        prompt = persona.embeddings if persona is not None else None
        kind = persona.kind if persona is not None else "soft"
        if common == 0:
            entry.cache = self.backend.new_cache()
            entry.ids = []
        else:
            self.backend.crop(entry.cache, num_virtual + common)
            entry.ids = ids[:common]
        row = Row(entry.cache, entry.ids, ids, config, self.stop_ids, device=self.backend.device)
        if request.bare_ids is not None and persona is not None:
            row.bare = self._bare_row(request.bare_ids)
        decoder = StreamDecoder(self.tokenizer)
        while len(row.ids) < len(ids):  # in chunks, so that Esc is honoured during a long prefill
            if cancel is not None and cancel.is_set() and row.logits is not None:
                stats.finish_reason = "cancelled"
                stats.seconds = time.perf_counter() - start
                return
            chunk = ids[len(row.ids) : len(row.ids) + PREFILL_CHUNK]
            first = not row.ids
            row.logits = self.backend.prefill(
                row.cache, chunk, prompt if first else None, kind=kind
            )
            row.ids.extend(chunk)
        prefill_bare(self.backend, row)
        while not row.finished:
            if cancel is not None and cancel.is_set():
                row.finish_reason = "cancelled"
                break
            token = row.choose()
            if stats.new_tokens == 0:
                stats.first_token_seconds = time.perf_counter() - start
            if token is None:
                break
            stats.new_tokens += 1
            piece = decoder.push(token)
            if piece:
                stats.seconds = time.perf_counter() - start
                yield piece
            if not row.finished:
                advance(self.backend, [row], [token])
        stats.token_ids = row.token_ids
        stats.finish_reason = row.finish_reason
        stats.seconds = time.perf_counter() - start
        tail = decoder.finish()  # characters held back while they could still change
        if tail:
            yield tail

    def _bare_row(self, bare_ids: list[int]) -> BareRow:
        """The bare companion of a guided reply, on the no-persona cache (what it holds of the
        conversation is reused, and the next turn reuses what this one adds)."""
        entry = self._cache_for(None)
        common = min(common_prefix(entry.ids, bare_ids), len(bare_ids) - 1)
        if common == 0 or entry.cache.get_seq_length() < common:
            entry.cache, entry.ids = self.backend.new_cache(), []
        else:
            self.backend.crop(entry.cache, common)
            entry.ids = bare_ids[:common]
        return BareRow(entry.cache, entry.ids, bare_ids)

    def _cache_for(self, persona: SoftPrompt | None) -> _PrefixCache:
        key = persona.sha256 if persona is not None else ""
        if key in self._caches:
            self._caches.move_to_end(key)
        else:
            self._caches[key] = _PrefixCache(cache=self.backend.new_cache())
            while len(self._caches) > self.cache_size:
                self._caches.popitem(last=False)
        return self._caches[key]


def stop_token_ids(loaded: LoadedModel) -> set[int]:
    """The ids that end a reply: the model's end-of-sequence ids and its end-of-turn tokens."""
    ids: set[int] = set()
    eos = getattr(loaded.model.generation_config, "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if loaded.tokenizer.eos_token_id is not None:
        ids.add(int(loaded.tokenizer.eos_token_id))
    added = dict(getattr(loaded.tokenizer, "added_tokens_encoder", {}))  # token -> id
    special = set(loaded.tokenizer.all_special_tokens) | set(added)
    wanted = [token for token in END_OF_TURN_TOKENS if token in special]
    # the whole vocabulary (a 50,000-entry dict, 0.06 s) only where a wanted token is not an added one
    vocab = {
        **(loaded.tokenizer.get_vocab() if any(token not in added for token in wanted) else {}),
        **added,
    }
    ids.update(vocab[token] for token in wanted if token in vocab)
    return ids
