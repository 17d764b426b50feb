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
from typing import Any

import torch

from persona.engine.config import GenerationConfig
from persona.engine.detok import StreamDecoder
from persona.engine.sampling import Sampler
from persona.errors import ConfigError
from persona.model.llama import cache_argument_name, new_cache
from persona.model.loader import LoadedModel
from persona.prompt.inject import prepend_prompt
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
    past: Any  # a KV cache of the kind the model takes (persona.model.llama.new_cache)
    ids: list[int] = field(default_factory=list)  # tokens held after the virtual tokens


class ChatEngine:
    def __init__(
        self, loaded: LoadedModel, *, cache_size: int = 4, max_context: int = DEFAULT_MAX_CONTEXT
    ) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.renderer = Renderer(loaded.tokenizer)
        self.cache_size = cache_size
        self.max_context = min(max_context, loaded.context_length)
        self.stop_ids = _stop_token_ids(loaded)
        self.last = GenerationStats()
        self._caches: OrderedDict[str, _PrefixCache] = OrderedDict()
        self._lock = threading.Lock()
        self.cache_arg = cache_argument_name(self.model)

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
        config = config or GenerationConfig()
        if persona is not None:
            persona.check_fits(self.loaded.fingerprint)
        if not messages or not messages[-1]["content"].strip():
            raise ConfigError("the message is empty; type something to send")
        with self._lock:
            yield from self._generate(list(messages), persona, config, system, cancel)

    def reply(
        self,
        messages: Sequence[Message],
        persona: SoftPrompt | None = None,
        config: GenerationConfig | None = None,
        **kwargs: object,
    ) -> str:
        """The whole reply as one string."""
        return "".join(self.stream(messages, persona, config, **kwargs))  # type: ignore[arg-type]

    def prompt_text(
        self,
        messages: Sequence[Message],
        persona: SoftPrompt | None = None,
        *,
        system: str | None = None,
    ) -> str:
        """The exact text that follows the soft prompt for this call (what --json reports)."""
        return self.renderer.text(messages, persona, system=system)

    def clear_cache(self) -> None:
        self._caches.clear()

    # ---- internals ------------------------------------------------------------------------------

    def _generate(
        self,
        messages: list[Message],
        persona: SoftPrompt | None,
        config: GenerationConfig,
        system: str | None,
        cancel: threading.Event | None,
    ) -> Iterator[str]:
        start = time.perf_counter()
        stats = GenerationStats()
        self.last = stats
        num_virtual = persona.num_virtual_tokens if persona is not None else 0
        ids, stats.dropped_messages = self._fit_window(
            messages, persona, system, num_virtual, config.max_new_tokens
        )
        stats.prompt_tokens = len(ids)
        entry = self._cache_for(persona)
        common = _common_prefix(entry.ids, ids)
        if entry.past.get_seq_length() < num_virtual + common:
            common = 0  # the cache lost what it held (a backend with one sequence served another persona)
        common = min(common, len(ids) - 1)  # always run at least one token, to get logits
        stats.reused_tokens = common
        sampler = Sampler(config)
        decoder = StreamDecoder(self.tokenizer)
        seen = torch.tensor([ids], dtype=torch.long)  # (1, T) for the repetition penalty
        with torch.inference_mode():
            if common == 0:
                entry.past = new_cache(self.model)
                done = min(len(ids), PREFILL_CHUNK)
                logits = self._prefill(ids[:done], persona, entry.past)
            else:
                _crop_to(entry.past, num_virtual + common)
                done = common
            entry.ids = list(ids[:done])
            while done < len(ids):  # in chunks, so that Esc is honoured during a long prefill too
                if cancel is not None and cancel.is_set():
                    stats.finish_reason = "cancelled"
                    stats.seconds = time.perf_counter() - start
                    return
                chunk = ids[done : done + PREFILL_CHUNK]
                logits = self._step(chunk, entry.past)
                done += len(chunk)
                entry.ids.extend(chunk)
            stats.finish_reason = "length"
            for index in range(config.max_new_tokens):
                if cancel is not None and cancel.is_set():
                    stats.finish_reason = "cancelled"
                    break
                token = sampler.next_token(logits, seen)
                if index == 0:
                    stats.first_token_seconds = time.perf_counter() - start
                if token in self.stop_ids:
                    stats.finish_reason = "stop"
                    break
                stats.new_tokens += 1
                stats.token_ids.append(token)
                seen = torch.cat([seen, seen.new_tensor([[token]])], dim=1)  # (1, S+1)
                piece = decoder.push(token)
                if piece:
                    stats.seconds = time.perf_counter() - start
                    yield piece
                if index + 1 < config.max_new_tokens:
                    logits = self._step([token], entry.past)
                    entry.ids.append(token)
        stats.seconds = time.perf_counter() - start

    def _prefill(self, ids: list[int], persona: SoftPrompt | None, past: Any) -> torch.Tensor:
        """[P ; ids] into an empty cache: one pass over the concatenated embeddings for a PyTorch
        model; a backend that takes embeddings and token ids in separate calls (llama.cpp) gets the
        virtual tokens first, then the ids, which under causal attention computes the same."""
        input_ids = torch.tensor([ids], dtype=torch.long)  # (1, T)
        if persona is None:
            out = self.model(
                input_ids=input_ids, use_cache=True, logits_to_keep=1, **{self.cache_arg: past}
            )
        elif hasattr(self.model, "get_input_embeddings"):  # embeds its own ids: one pass
            embeds = self.model.get_input_embeddings()(input_ids)  # (1, T, D)
            embeds, _, _ = prepend_prompt(persona.embeddings, embeds)  # (1, N+T, D)
            out = self.model(
                inputs_embeds=embeds, use_cache=True, logits_to_keep=1, **{self.cache_arg: past}
            )
        else:
            self.model(
                inputs_embeds=persona.embeddings.unsqueeze(0),
                use_cache=True,
                logits_to_keep=1,
                **{self.cache_arg: past},
            )
            out = self.model(
                input_ids=input_ids, use_cache=True, logits_to_keep=1, **{self.cache_arg: past}
            )
        return out.logits[:, -1, :]  # (1, V)

    def _step(self, ids: list[int], past: Any) -> torch.Tensor:
        input_ids = torch.tensor([ids], dtype=torch.long)  # (1, t)
        out = self.model(
            input_ids=input_ids, use_cache=True, logits_to_keep=1, **{self.cache_arg: past}
        )
        return out.logits[:, -1, :]  # (1, V)

    def _cache_for(self, persona: SoftPrompt | None) -> _PrefixCache:
        key = persona.sha256 if persona is not None else ""
        if key in self._caches:
            self._caches.move_to_end(key)
        else:
            self._caches[key] = _PrefixCache(past=new_cache(self.model))
            while len(self._caches) > self.cache_size:
                self._caches.popitem(last=False)
        return self._caches[key]

    def _fit_window(
        self,
        messages: list[Message],
        persona: SoftPrompt | None,
        system: str | None,
        num_virtual: int,
        max_new: int,
    ) -> tuple[list[int], int]:
        """Render, dropping the oldest turns (never the system message or the last one) until it fits."""
        budget = self.max_context - num_virtual - max_new
        system_messages = [m for m in messages if m["role"] == "system"][:1]
        turns = [m for m in messages if m["role"] != "system"]
        dropped = 0
        while True:
            ids = self.renderer.render([*system_messages, *turns], persona, system=system)
            if len(ids) <= budget:
                return ids, dropped
            if len(turns) <= 1:
                raise ConfigError(
                    f"the message is {len(ids)} tokens with its prompt, more than the {budget} that fit the "
                    f"model's window ({self.max_context} tokens, {max_new} kept for the reply); shorten it or lower max_tokens"
                )
            turns = turns[2:] if len(turns) > 2 and turns[0]["role"] == "user" else turns[1:]
            dropped += 1


def _common_prefix(a: list[int], b: list[int]) -> int:
    limit = min(len(a), len(b))
    index = 0
    while index < limit and a[index] == b[index]:
        index += 1
    return index


def _crop_to(past: Any, length: int) -> None:
    surplus = past.get_seq_length() - length
    if surplus > 0:
        past.crop(-surplus)


def _stop_token_ids(loaded: LoadedModel) -> set[int]:
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
