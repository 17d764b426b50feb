"""Continuous batching: concurrent mixed-persona requests each get exactly their solo reply; rows
join and leave between steps; a cancelled request frees its row; follow-up turns reuse the cache."""

from __future__ import annotations

import threading

import pytest
import torch

from persona.engine.chat import ChatEngine
from persona.engine.config import GenerationConfig
from persona.engine.scheduler import QueueFull, Request, Scheduler
from persona.prompt.softprompt import SoftPrompt

GREEDY = GenerationConfig(temperature=0, repetition_penalty=1.0, max_new_tokens=12)
QUESTIONS = ["Hello there!", "What is the capital of France?", "To be?", "Tell me a story."]


class RecordingBackend:
    """The real backend, recording how many rows each decode call ran."""

    def __init__(self, inner) -> None:
        self.inner, self.max_rows, self.widths = inner, inner.max_rows, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def decode(self, tokens, caches):
        self.widths.append(len(caches))
        return self.inner.decode(tokens, caches)


class Collect:
    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.reason = ""
        self.usage = (0, 0)
        self.done = threading.Event()

    def piece(self, text: str) -> None:
        self.pieces.append(text)

    def finish(self, reason: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.reason, self.usage = reason, (prompt_tokens, completion_tokens)
        self.done.set()

    def error(self, error: Exception) -> None:
        self.reason = f"error: {error}"
        self.done.set()

    @property
    def text(self) -> str:
        assert self.done.wait(120), "the scheduler never finished this request"
        return "".join(self.pieces)


def personas(each_tiny, count: int) -> list[SoftPrompt | None]:
    found: list[SoftPrompt | None] = [None]
    for seed in range(1, count):
        generator = torch.Generator().manual_seed(seed)
        embeddings = torch.randn(
            3 + seed % 5, each_tiny.fingerprint.hidden_size, generator=generator
        )
        found.append(SoftPrompt(embeddings, name=f"p{seed}", fingerprint=each_tiny.fingerprint))
    return found


def one_question_each(each_persona) -> list:
    """(persona, one-message conversation) jobs: each persona asked QUESTIONS in turn."""
    return [
        (persona, [{"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}])
        for index, persona in enumerate(each_persona)
    ]


def solo_and_scheduled(loaded, jobs, config: GenerationConfig, **options):
    """Each (persona, messages) job answered alone by a ChatEngine, then all of them submitted at
    once to a Scheduler over `loaded` (`options`: its settings). (solo replies, the scheduler's
    sinks once all finished, the widths of its decode calls, its metrics at the end)."""
    engine = ChatEngine(loaded)
    alone = [engine.reply(messages, persona, config) for persona, messages in jobs]
    recording = RecordingBackend(engine.backend)
    scheduler = Scheduler(ChatEngine(loaded, backend=recording), **options)
    try:
        sinks = [Collect() for _ in jobs]
        for (persona, messages), sink in zip(jobs, sinks, strict=True):
            scheduler.submit(Request(messages, persona, config), sink)
        for sink in sinks:
            assert sink.done.wait(120), "the scheduler never finished this request"
        return alone, sinks, recording.widths, scheduler.metrics()
    finally:
        scheduler.close()


def test_sixteen_concurrent_mixed_personas_equal_their_solo_replies(each_tiny):
    jobs = one_question_each(personas(each_tiny, 16))
    alone, sinks, widths, metrics = solo_and_scheduled(
        each_tiny, jobs, GREEDY, max_rows=16, prefill_chunk=1000
    )
    assert len(set(alone)) > 8, "replies this alike would make the comparison meaningless"
    assert [sink.text for sink in sinks] == alone
    assert all(sink.reason in ("stop", "length") for sink in sinks)
    assert max(widths) >= 12  # one forward advanced most rows at once
    assert metrics["active_rows"] == 0
    assert metrics["tokens_total"] == sum(sink.usage[1] for sink in sinks)


def test_requests_joining_while_others_decode_still_get_their_solo_reply(each_tiny):
    engine = ChatEngine(each_tiny)
    few = personas(each_tiny, 4)
    long_config = GenerationConfig(temperature=0, repetition_penalty=1.0, max_new_tokens=40)
    first = [{"role": "user", "content": "Tell me a story."}]
    expected_first = engine.reply(first, few[1], long_config)
    # a prefill chunk of 3 makes prompts join over several steps while another row decodes
    scheduler = Scheduler(ChatEngine(each_tiny), max_rows=4, prefill_chunk=3)
    try:
        early = Collect()
        scheduler.submit(Request(first, few[1], long_config), early)
        late = []
        for persona, question in zip(few[2:], QUESTIONS, strict=False):
            messages = [{"role": "user", "content": question}]
            sink = Collect()
            scheduler.submit(Request(messages, persona, GREEDY), sink)
            late.append((sink, engine.reply(messages, persona, GREEDY)))
        assert early.text == expected_first
        assert [sink.text for sink, _ in late] == [expected for _, expected in late]
    finally:
        scheduler.close()


def test_a_cancelled_request_frees_its_row_and_the_others_go_on(each_tiny):
    engine, endless_engine = ChatEngine(each_tiny), ChatEngine(each_tiny)
    engine.stop_ids = endless_engine.stop_ids = set()  # replies end by length or cancel only
    endless_engine.max_context = (
        1_000_000  # RoPE has no end: the endless reply runs until cancelled
    )
    few = personas(each_tiny, 3)
    endless = GenerationConfig(temperature=0.9, top_k=0, max_new_tokens=900_000, seed=1)
    messages = [{"role": "user", "content": "Hello there!"}]
    expected = engine.reply(messages, few[2], GREEDY)
    scheduler = Scheduler(endless_engine, max_rows=4)
    try:
        leaving = Collect()
        ticket = scheduler.submit(
            Request([{"role": "user", "content": "Go on forever."}], few[1], endless), leaving
        )
        staying = Collect()
        scheduler.submit(Request(messages, few[2], GREEDY), staying)
        assert staying.text == expected
        assert scheduler.metrics()["active_rows"] == 1, leaving.reason  # the endless one runs on
        ticket.cancel()
        assert leaving.done.wait(60) and leaving.reason == "cancelled"
        assert scheduler.metrics()["active_rows"] == 0
    finally:
        scheduler.close()


def test_a_follow_up_turn_reuses_the_cached_prefix_and_gives_the_fresh_reply(each_tiny):
    persona = personas(each_tiny, 2)[1]
    scheduler = Scheduler(ChatEngine(each_tiny), max_rows=4)
    try:
        turn1 = [{"role": "user", "content": "Hello there!"}]
        first = Collect()
        scheduler.submit(Request(turn1, persona, GREEDY), first)
        turn2 = [*turn1, {"role": "assistant", "content": first.text}]
        turn2.append({"role": "user", "content": "And then?"})
        second = Collect()
        scheduler.submit(Request(turn2, persona, GREEDY), second)
        assert second.text == ChatEngine(each_tiny).reply(turn2, persona, GREEDY)
        assert scheduler.metrics()["prefix_cache_hits"] == 1
        other = Collect()  # another persona never takes this persona's cache
        scheduler.submit(Request(turn2, None, GREEDY), other)
        assert other.text == ChatEngine(each_tiny).reply(turn2, None, GREEDY)
        assert scheduler.metrics()["prefix_cache_hits"] == 1
    finally:
        scheduler.close()


def test_a_full_queue_refuses_with_a_reason(each_tiny):
    engine = ChatEngine(each_tiny)
    engine.stop_ids, engine.max_context = set(), 1_000_000  # the first reply runs until cancelled
    endless = GenerationConfig(temperature=0.9, top_k=0, max_new_tokens=900_000, seed=1)
    scheduler = Scheduler(engine, max_rows=1, max_queue=0)
    try:
        busy = Collect()
        ticket = scheduler.submit(Request([{"role": "user", "content": "hi"}], None, endless), busy)
        with pytest.raises(QueueFull, match="retry"):
            scheduler.submit(Request([{"role": "user", "content": "hi"}], None, GREEDY), Collect())
        ticket.cancel()
        assert busy.done.wait(60) and busy.reason == "cancelled"
    finally:
        scheduler.close()


def test_a_conversation_too_long_for_the_window_is_refused_on_submit(each_tiny):
    from persona.errors import ConfigError

    scheduler = Scheduler(ChatEngine(each_tiny))
    try:
        words = " ".join(["word"] * 2000)
        with pytest.raises(ConfigError, match="window"):
            scheduler.submit(Request([{"role": "user", "content": words}], None, GREEDY), Collect())
        assert scheduler.metrics()["queue_depth"] == 0
    finally:
        scheduler.close()


def test_a_raw_prompt_too_long_for_the_window_is_refused_on_submit(each_tiny):
    from persona.errors import ConfigError

    scheduler = Scheduler(ChatEngine(each_tiny))
    try:
        ids = [5] * 250  # the each_tiny model's window is 256 positions; 12 are kept for the reply
        with pytest.raises(ConfigError, match="window"):
            scheduler.submit(Request([], None, GREEDY, ids=ids), Collect())
    finally:
        scheduler.close()


def test_a_one_token_prompt_after_a_cached_one_of_its_persona(each_tiny):
    """The cached prefix leaves only the soft prompt to reuse: the prompt is not put in twice."""
    persona = personas(each_tiny, 2)[1]
    scheduler = Scheduler(ChatEngine(each_tiny))
    try:
        first, second = Collect(), Collect()
        scheduler.submit(Request([], persona, GREEDY, ids=[7, 8, 9]), first)
        assert first.done.wait(60) and first.reason in ("stop", "length")
        scheduler.submit(Request([], persona, GREEDY, ids=[7]), second)
        assert second.done.wait(60) and second.reason in ("stop", "length"), second.reason
        alone = Collect()
        fresh = Scheduler(ChatEngine(each_tiny))
        try:
            fresh.submit(Request([], persona, GREEDY, ids=[7]), alone)
            assert second.text == alone.text
        finally:
            fresh.close()
    finally:
        scheduler.close()


def test_requests_for_free_rows_are_taken_even_with_no_queue(each_tiny):
    """A request that a free row will take at the next step is not refused for a full queue."""
    scheduler = Scheduler(ChatEngine(each_tiny), max_rows=4, max_queue=0)
    try:
        sinks = [Collect() for _ in range(4)]
        for sink in sinks:
            scheduler.submit(Request([{"role": "user", "content": "hi"}], None, GREEDY), sink)
        assert all(sink.text is not None for sink in sinks)
    finally:
        scheduler.close()


def test_a_new_conversation_does_not_take_another_conversations_cache(each_tiny):
    """Sharing the chat template's first tokens is not continuing a conversation."""
    persona = personas(each_tiny, 2)[1]
    scheduler = Scheduler(ChatEngine(each_tiny))
    try:
        first = Collect()
        scheduler.submit(
            Request([{"role": "user", "content": "Hello there!"}], persona, GREEDY), first
        )
        assert first.text is not None
        other = Collect()
        messages = [{"role": "user", "content": "Tell me about ships."}]
        scheduler.submit(Request(messages, persona, GREEDY), other)
        assert other.text == ChatEngine(each_tiny).reply(messages, persona, GREEDY)
        assert scheduler.metrics()["prefix_cache_hits"] == 0
        assert len(scheduler.prefix_cache) == 2  # both conversations keep their cache
    finally:
        scheduler.close()


def test_the_prefix_cache_stays_within_its_bound_counting_what_caches_really_hold(each_tiny):
    engine = ChatEngine(each_tiny)
    one = Scheduler(engine)
    try:
        sink = Collect()
        one.submit(Request([{"role": "user", "content": "Hello there!"}], None, GREEDY), sink)
        assert sink.text is not None
        size = one.metrics()["prefix_cache_bytes"]
        config = engine.loaded.model.config  # keys and values of every position kept, at least
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        per_position = config.num_hidden_layers * 2 * kv_heads * head_dim * 4
        assert size >= per_position * sink.usage[0]
    finally:
        one.close()
    bounded = Scheduler(ChatEngine(each_tiny), prefix_cache_bytes=int(size * 2.5))
    try:
        for question in QUESTIONS:
            sink = Collect()
            bounded.submit(Request([{"role": "user", "content": question}], None, GREEDY), sink)
            assert sink.text is not None
        assert 0 < bounded.metrics()["prefix_cache_bytes"] <= size * 2.5
        assert len(bounded.prefix_cache) < len(QUESTIONS)  # the oldest went
    finally:
        bounded.close()


class FailingBackend(RecordingBackend):
    """The real backend, except that prefilling a prompt holding token `poison` fails."""

    def __init__(self, inner, poison: int) -> None:
        super().__init__(inner)
        self.poison = poison

    def prefill(self, cache, ids, prompt=None, *, kind="soft"):
        if self.poison in ids:
            raise RuntimeError("simulated fault")
        return self.inner.prefill(cache, ids, prompt, kind=kind)


def test_a_request_that_fails_fails_alone(each_tiny):
    engine = ChatEngine(each_tiny)
    good = [{"role": "user", "content": "Hello there!"}]
    expected = engine.reply(good, None, GREEDY)
    rendered = engine.renderer.render(good, None)
    poison = next(token for token in range(1, 1000) if token not in rendered)
    failing = FailingBackend(engine.backend, poison=poison)
    scheduler = Scheduler(ChatEngine(each_tiny, backend=failing))
    try:
        bad, fine = Collect(), Collect()
        scheduler.submit(Request([], None, GREEDY, ids=[poison, poison]), bad)
        scheduler.submit(Request(good, None, GREEDY), fine)
        assert fine.text == expected
        assert bad.done.wait(60) and bad.reason.startswith("error:") and "simulated" in bad.reason
        assert scheduler.metrics()["active_rows"] == 0
    finally:
        scheduler.close()


def test_closing_refuses_what_is_still_waiting_or_running(each_tiny):
    engine = ChatEngine(each_tiny)
    engine.stop_ids, engine.max_context = set(), 1_000_000
    endless = GenerationConfig(temperature=0.9, top_k=0, max_new_tokens=900_000, seed=1)
    scheduler = Scheduler(engine, max_rows=1)
    running, waiting = Collect(), Collect()
    scheduler.submit(Request([{"role": "user", "content": "hi"}], None, endless), running)
    scheduler.submit(Request([{"role": "user", "content": "hi"}], None, GREEDY), waiting)
    scheduler.close()
    for sink in (running, waiting):
        assert sink.done.wait(60) and "shutting down" in sink.reason


def test_a_prompt_once_encoded_sends_its_first_token_before_the_next_prompt_is_encoded(each_tiny):
    """Prompts that join in the same turn do not wait for one another: each gives its first token
    as soon as it is encoded, and the replies are still the solo ones."""
    engine = ChatEngine(each_tiny)
    jobs = [[{"role": "user", "content": question}] for question in QUESTIONS[:3]]
    alone = [engine.reply(messages, None, GREEDY) for messages in jobs]
    events: list[str] = []
    release = threading.Event()

    class Gated(RecordingBackend):
        def prefill(self, cache, ids, *args, **kwargs):
            if not events:
                assert release.wait(30)  # the first prompt holds the loop until the rest queue
            events.append("prefill")
            return self.inner.prefill(cache, ids, *args, **kwargs)

    class Noting(Collect):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        def piece(self, text: str) -> None:
            if not self.pieces:
                events.append(f"first {self.name}")
            super().piece(text)

    scheduler = Scheduler(
        ChatEngine(each_tiny, backend=Gated(engine.backend)), max_rows=4, prefill_chunk=1000
    )
    try:
        sinks = [Noting(name) for name in "abc"]
        for messages, sink in zip(jobs, sinks, strict=True):
            scheduler.submit(Request(messages, None, GREEDY), sink)
        release.set()
        assert [sink.text for sink in sinks] == alone
        prefills = [index for index, event in enumerate(events) if event == "prefill"]
        assert len(prefills) == 3
        # b and c joined together after a: b's first token came before c's prompt was encoded
        assert events.index("first b") < prefills[2]
        assert events.index("first a") < prefills[1]
    finally:
        scheduler.close()


@pytest.mark.parametrize("kind", ["batch", "serial"])
def test_a_runners_worker_uses_the_threads_its_constructor_saw(each_tiny, kind):
    """The thread that starts a runner keeps one torch thread afterwards (persona.engine.cores:
    a server's HTTP side, the chat's screen); the runner's own thread, which generates, keeps
    the count there was."""
    from persona.engine import cores
    from persona.engine.runners import runner_for

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # more than the one the starting thread keeps, on any machine
    counts: list[int] = []

    class Counting(Collect):
        def piece(self, text: str) -> None:
            counts.append(torch.get_num_threads())  # called on the runner's thread
            super().piece(text)

    runner = runner_for(ChatEngine(each_tiny), kind)
    try:
        cores.leave_to_workers()
        assert torch.get_num_threads() == 1
        sink = Counting()
        runner.submit(Request([{"role": "user", "content": QUESTIONS[0]}], None, GREEDY), sink)
        assert sink.text
        assert counts and set(counts) == {2}
    finally:
        torch.set_num_threads(before)
        runner.close()
