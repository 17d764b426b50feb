"""The chat engine: cached generation equals uncached, caches survive persona switches, windows overflow cleanly."""

from __future__ import annotations

import threading

import pytest
import torch

from persona.engine.chat import ChatEngine
from persona.engine.config import GenerationConfig
from persona.errors import ConfigError, PromptMismatchError
from persona.model.fingerprint import Fingerprint
from persona.prompt.softprompt import SoftPrompt
from tests.reference import greedy_uncached

GREEDY = GenerationConfig(temperature=0, repetition_penalty=1.0, max_new_tokens=10)


def other_prompt(each_tiny, seed: int, name: str) -> SoftPrompt:
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(7, each_tiny.fingerprint.hidden_size, generator=generator)  # (7, D)
    return SoftPrompt(embeddings, name=name, fingerprint=each_tiny.fingerprint)


def check_against_reference(engine, messages, persona, system=None):
    reply = engine.reply(messages, persona, GREEDY, system=system)
    ids = engine.renderer.render(messages, persona, system=system)
    expected = greedy_uncached(
        engine.loaded.model,
        ids,
        persona.embeddings if persona else None,
        GREEDY.max_new_tokens,
        engine.stop_ids,
    )
    assert engine.last.token_ids == expected
    assert len(set(expected)) > 2, "a degenerate reference would make this comparison meaningless"
    return reply


def test_multi_turn_with_switches_matches_uncached_and_reuses_cache(each_tiny, tiny_prompt):
    engine = ChatEngine(each_tiny)
    other = other_prompt(each_tiny, 2, "other")
    messages = [{"role": "user", "content": "Hello there!"}]
    plan = [tiny_prompt, other, tiny_prompt, None, tiny_prompt]
    replies_same_context = [engine.reply(messages, p, GREEDY) for p in (tiny_prompt, other)]
    assert replies_same_context[0] != replies_same_context[1]
    engine.clear_cache()
    reused, replies = [], []
    for turn, persona in enumerate(plan):
        reply = check_against_reference(engine, messages, persona)
        reused.append(engine.last.reused_tokens)
        replies.append(reply)
        messages += [
            {"role": "assistant", "content": reply or "..."},
            {"role": "user", "content": f"Turn {turn}: how are you?"},
        ]
    assert reused[0] == 0 and reused[1] == 0  # first use of each persona encodes everything
    assert reused[2] > 0  # back to the first persona: its cached prefix is reused
    assert reused[4] > 0


def test_second_turn_only_runs_new_tokens(each_tiny, tiny_prompt):
    engine = ChatEngine(each_tiny)
    messages = [{"role": "user", "content": "To be, or not to be?"}]
    reply = engine.reply(messages, tiny_prompt, GREEDY)
    first_prompt_tokens = engine.last.prompt_tokens
    messages += [
        {"role": "assistant", "content": reply},
        {"role": "user", "content": "Is that the question?"},
    ]
    engine.reply(messages, tiny_prompt, GREEDY)
    assert engine.last.reused_tokens >= first_prompt_tokens


def test_history_that_outgrows_the_window_drops_oldest_turns(each_tiny, tiny_prompt):
    engine = ChatEngine(each_tiny, max_context=160)
    messages = []
    for turn in range(12):
        messages += [
            {"role": "user", "content": f"Question {turn}: what is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is Paris."},
        ]
    messages.append({"role": "user", "content": "And again?"})
    reply = engine.reply(messages, tiny_prompt, GREEDY)
    assert engine.last.dropped_messages > 0
    assert engine.last.prompt_tokens + tiny_prompt.num_virtual_tokens + GREEDY.max_new_tokens <= 160
    assert isinstance(reply, str)


def test_a_long_conversation_is_fitted_with_few_renders_to_the_same_turns(each_tiny, tiny_prompt):
    """Dropping one turn per render took seconds of the server's event loop on a large body; the
    fewest drops that fit are found by bisection, and they are the same drops as one at a time."""
    engine = ChatEngine(each_tiny, max_context=200)
    messages = [{"role": "system", "content": "Be brief."}]
    for turn in range(100):
        messages += [
            {"role": "user", "content": f"Question {turn}: what is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is Paris."},
        ]
    messages.append({"role": "user", "content": "And again?"})
    render, calls = engine.renderer.render, []
    engine.renderer.render = lambda *args, **kwargs: calls.append(1) or render(*args, **kwargs)
    ids, dropped = engine.fit_window(messages, tiny_prompt, None, 10)
    engine.renderer.render = render
    assert len(calls) <= 12  # log2(100) + a few, where one render per drop took about 100
    budget = engine.window_budget(tiny_prompt, 10)
    turns = messages[1:]
    expected = next(  # the reference: the fewest (question, answer) pairs dropped that fit
        drop
        for drop in range(len(turns) // 2 + 1)
        if len(render([messages[0], *turns[2 * drop :]], tiny_prompt)) <= budget
    )
    assert dropped == expected > 0
    assert ids == render([messages[0], *turns[2 * dropped :]], tiny_prompt)


def test_one_message_too_long_for_the_window_is_a_clear_error(each_tiny):
    engine = ChatEngine(each_tiny, max_context=64)
    with pytest.raises(ConfigError, match="window"):
        engine.reply([{"role": "user", "content": "hello " * 200}], None, GREEDY)


def test_sampling_is_reproducible_with_a_seed(each_tiny, tiny_prompt):
    engine = ChatEngine(each_tiny)
    messages = [{"role": "user", "content": "Hello there!"}]
    config = GenerationConfig(temperature=1.0, top_p=0.95, top_k=0, seed=7, max_new_tokens=12)
    first = engine.reply(messages, tiny_prompt, config)
    first_ids = engine.last.token_ids
    engine.clear_cache()
    assert engine.reply(messages, tiny_prompt, config) == first
    assert engine.last.token_ids == first_ids
    runs = set()
    for seed in range(4):
        engine.reply(
            messages,
            tiny_prompt,
            GenerationConfig(temperature=1.5, top_k=0, top_p=1.0, seed=seed, max_new_tokens=12),
        )
        runs.add(tuple(engine.last.token_ids))
    assert len(runs) > 1  # the seed is used: different seeds sample different replies


def test_cancel_stops_generation(each_tiny, tiny_prompt):
    engine = ChatEngine(each_tiny)
    cancel = threading.Event()
    cancel.set()
    pieces = list(
        engine.stream([{"role": "user", "content": "Hello"}], tiny_prompt, GREEDY, cancel=cancel)
    )
    assert pieces == [] and engine.last.finish_reason == "cancelled"


def test_prompt_for_another_model_is_refused(each_tiny):
    alien = SoftPrompt(
        torch.zeros(3, each_tiny.fingerprint.hidden_size),
        name="alien",
        fingerprint=Fingerprint(
            "GPT2LMHeadModel", each_tiny.fingerprint.hidden_size, 50257, "f" * 16
        ),
    )
    with pytest.raises(PromptMismatchError, match="alien"):
        ChatEngine(each_tiny).reply([{"role": "user", "content": "hi"}], alien, GREEDY)


def test_empty_message_is_refused(each_tiny):
    with pytest.raises(ConfigError, match="empty"):
        ChatEngine(each_tiny).reply([{"role": "user", "content": "   "}], None, GREEDY)


@pytest.mark.parametrize(
    "field,value",
    [
        ("temperature", -0.1),
        ("top_p", 0.0),
        ("top_k", -1),
        ("max_new_tokens", 0),
        ("repetition_penalty", 0),
    ],
)
def test_bad_generation_settings_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        GenerationConfig(**{field: value})


class CountingBackend:
    """The engine's real backend, recording how many ids each prefill call ran, and optionally
    calling `on_prefill` after each call (as a user pressing Esc mid-encoding would)."""

    def __init__(self, inner, on_prefill=None):
        self.inner, self.on_prefill, self.widths = inner, on_prefill, []
        self.max_rows = inner.max_rows

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def prefill(self, cache, ids, prompt=None, *, kind="soft"):
        self.widths.append(len(ids))
        logits = self.inner.prefill(cache, ids, prompt, kind=kind)
        if self.on_prefill is not None:
            self.on_prefill()
        return logits


def test_long_history_is_encoded_in_chunks_with_the_same_result(
    each_tiny, tiny_prompt, monkeypatch
):
    import persona.engine.chat as chat

    messages = [{"role": "user", "content": "To be, or not to be, that is the question. " * 6}]
    whole = ChatEngine(each_tiny)
    whole.reply(messages, tiny_prompt, GREEDY)
    monkeypatch.setattr(chat, "PREFILL_CHUNK", 7)
    counting = CountingBackend(ChatEngine(each_tiny).backend)
    chunked = ChatEngine(each_tiny, backend=counting)
    chunked.reply(messages, tiny_prompt, GREEDY)
    assert chunked.last.prompt_tokens > 3 * 7
    assert counting.widths[:-1] == [7] * (len(counting.widths) - 1)  # 7 at a time, the rest last
    assert sum(counting.widths) == chunked.last.prompt_tokens
    assert chunked.last.token_ids == whole.last.token_ids


def test_cancel_during_a_chunked_prefill_stops_before_any_token(
    each_tiny, tiny_prompt, monkeypatch
):
    import persona.engine.chat as chat

    monkeypatch.setattr(chat, "PREFILL_CHUNK", 4)
    cancel = threading.Event()
    counting = CountingBackend(ChatEngine(each_tiny).backend, on_prefill=cancel.set)
    engine = ChatEngine(each_tiny, backend=counting)
    message = [{"role": "user", "content": "Hello there, how are you today?"}]
    pieces = list(engine.stream(message, tiny_prompt, GREEDY, cancel=cancel))
    assert pieces == [] and engine.last.finish_reason == "cancelled" and engine.last.new_tokens == 0
    # Esc pressed during the first chunk: the encoding stopped there, not at the end
    assert engine.last.prompt_tokens > 3 * 4 and counting.widths == [4]
    counting.on_prefill = None
    cancel.clear()
    engine.reply(message, tiny_prompt, GREEDY)
    fresh = ChatEngine(each_tiny)
    fresh.reply(message, tiny_prompt, GREEDY)
    assert (
        engine.last.token_ids == fresh.last.token_ids
    )  # the half-encoded cache is reused correctly
