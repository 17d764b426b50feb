"""Persona strength (classifier-free guidance): strength 1 is today's reply token for token, another
strength changes it, the guided scores are the formula's, and a guided row batched beside others
gives its solo reply."""

from __future__ import annotations

import pytest
import torch

from persona.engine.batch import BatchRequest, generate_batch
from persona.engine.chat import ChatEngine
from persona.engine.config import GenerationConfig, PersonaDefaults
from persona.engine.guidance import guided_logits
from persona.engine.scheduler import Request, Scheduler
from persona.errors import ConfigError
from persona.prompt.softprompt import SoftPrompt
from tests.test_scheduler import Collect

HELLO = [{"role": "user", "content": "Hello there! What is the capital of France?"}]


def greedy(strength: float = 1.0, **changes) -> GenerationConfig:
    values = {"temperature": 0, "repetition_penalty": 1.0, "max_new_tokens": 12}
    return GenerationConfig(**{**values, **changes}, strength=strength)


def persona_for(each_tiny, seed: int = 1, length: int = 5) -> SoftPrompt:
    generator = torch.Generator().manual_seed(seed)
    return SoftPrompt(
        torch.randn(length, each_tiny.fingerprint.hidden_size, generator=generator),
        name=f"p{seed}",
        fingerprint=each_tiny.fingerprint,
    )


class CountingBackend:
    """The real backend, counting the rows it decodes and the prefills it runs."""

    def __init__(self, inner) -> None:
        self.inner, self.max_rows, self.widths, self.prefills = inner, inner.max_rows, [], 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def prefill(self, *args, **kwargs):
        self.prefills += 1
        return self.inner.prefill(*args, **kwargs)

    def decode(self, tokens, caches):
        self.widths.append(len(caches))
        return self.inner.decode(tokens, caches)


def test_strength_one_is_todays_reply_and_runs_no_bare_row(each_tiny):
    persona = persona_for(each_tiny)
    today = ChatEngine(each_tiny)
    sampled = GenerationConfig(seed=3, max_new_tokens=16)  # the chat's defaults, seeded
    expected = today.reply(HELLO, persona, sampled)
    expected_ids = list(today.last.token_ids)
    counting = CountingBackend(ChatEngine(each_tiny).backend)
    engine = ChatEngine(each_tiny, backend=counting)
    assert engine.reply(HELLO, persona, GenerationConfig(seed=3, max_new_tokens=16, strength=1.0))
    assert engine.last.token_ids == expected_ids
    assert engine.reply(HELLO, persona, GenerationConfig(seed=3, max_new_tokens=16)) == expected
    assert counting.prefills == 2  # one per reply: no bare row was built
    assert counting.widths and set(counting.widths) == {1}  # and none decoded beside it
    counting.widths.clear()
    engine.reply(HELLO, persona, GenerationConfig(seed=3, max_new_tokens=16, strength=2.0))
    assert set(counting.widths) == {2}  # the bare row rides in the persona row's decode call


def test_another_strength_changes_the_reply(each_tiny):
    persona = persona_for(each_tiny)
    engine = ChatEngine(each_tiny)
    plain = engine.reply(HELLO, persona, greedy(max_new_tokens=20))
    pushed = engine.reply(HELLO, persona, greedy(3.0, max_new_tokens=20))
    bare = engine.reply(HELLO, None, greedy(max_new_tokens=20))
    assert pushed != plain
    # strength 0 is the bare model: the persona's reply with its guidance taken away entirely
    assert engine.reply(HELLO, persona, greedy(0.0, max_new_tokens=20)) == bare


def test_guided_scores_are_the_formula_on_the_tiny_model(each_tiny):
    persona = persona_for(each_tiny)
    engine = ChatEngine(each_tiny)
    backend = engine.backend
    ids = engine.renderer.render(HELLO, persona)
    bare_ids = engine.renderer.render(HELLO, None)
    with_persona = backend.prefill(
        backend.new_cache(), ids, persona.embeddings, kind=persona.kind
    ).view(1, -1)  # (1, V)
    without = backend.prefill(backend.new_cache(), bare_ids, None).view(1, -1)  # (1, V)
    assert not torch.allclose(with_persona, without)
    for strength in (0.0, 0.5, 1.5, 3.0):
        guided = guided_logits(with_persona, without, strength)
        lp, lb = with_persona.log_softmax(-1), without.log_softmax(-1)
        formula = lb + strength * (lp - lb)  # (1, V)
        gap = guided - formula  # one constant per row
        torch.testing.assert_close(gap, gap[:, :1].expand_as(gap), atol=1e-4, rtol=0)
        torch.testing.assert_close(guided.softmax(-1), formula.softmax(-1), atol=1e-6, rtol=1e-4)
    assert torch.equal(guided_logits(with_persona, without, 1.0), with_persona.float())


def test_guided_greedy_reply_follows_the_formula_token_by_token(each_tiny):
    """The engine's guided reply is the argmax of the formula, recomputed from scratch per step."""
    persona = persona_for(each_tiny)
    engine = ChatEngine(each_tiny)
    backend = engine.backend
    got = engine.reply(HELLO, persona, greedy(2.0, max_new_tokens=6))
    got_ids = list(engine.last.token_ids)
    ids = engine.renderer.render(HELLO, persona)
    bare_ids = engine.renderer.render(HELLO, None)
    expected: list[int] = []
    for _ in range(len(got_ids)):
        lp = backend.prefill(
            backend.new_cache(), ids + expected, persona.embeddings, kind=persona.kind
        ).log_softmax(-1)
        lb = backend.prefill(backend.new_cache(), bare_ids + expected, None).log_softmax(-1)
        expected.append(int((lb + 2.0 * (lp - lb)).argmax()))
    assert got and got_ids == expected


def test_batched_and_scheduled_guided_rows_equal_their_solo_replies(each_tiny):
    engine = ChatEngine(each_tiny)
    personas = [persona_for(each_tiny, 1), None, persona_for(each_tiny, 2, 7)]
    questions = ["Hello there!", "To be?", "What is the capital of France? Tell me now."]
    config = greedy(2.5)
    solo = []
    for persona, question in zip(personas, questions, strict=True):
        engine.reply([{"role": "user", "content": question}], persona, config)
        solo.append(list(engine.last.token_ids))
    requests = [
        BatchRequest([{"role": "user", "content": q}], p)
        for p, q in zip(personas, questions, strict=True)
    ]
    results, _ = generate_batch(engine, requests, config)
    assert [r.token_ids for r in results] == solo
    scheduler = Scheduler(ChatEngine(each_tiny), max_rows=4, prefill_chunk=5)
    try:
        sinks = []
        for persona, question in zip(personas, questions, strict=True):
            sink = Collect()
            scheduler.submit(
                Request([{"role": "user", "content": question}], persona, config), sink
            )
            sinks.append(sink)
        texts = [sink.text for sink in sinks]
    finally:
        scheduler.close()
    decode = engine.tokenizer.decode
    assert texts == [decode(ids, skip_special_tokens=True) for ids in solo]


def test_a_follow_up_turn_with_strength_reuses_both_caches_and_gives_the_fresh_reply(each_tiny):
    persona = persona_for(each_tiny)
    config = greedy(2.0)
    engine = ChatEngine(each_tiny)
    first = engine.reply(HELLO, persona, config)
    follow = [*HELLO, {"role": "assistant", "content": first}, {"role": "user", "content": "Why?"}]
    second = engine.reply(follow, persona, config)
    assert engine.last.reused_tokens > 0
    assert second == ChatEngine(each_tiny).reply(follow, persona, config)


@pytest.mark.parametrize("value", [-0.5, 10.5, float("nan"), float("inf")])
def test_a_bad_strength_is_refused_in_one_line(value):
    with pytest.raises(ConfigError, match=r"^strength=.* must be from 0 to 10"):
        GenerationConfig(strength=value)
    with pytest.raises(ConfigError, match="strength"):
        PersonaDefaults(strength=value)


def test_a_persona_default_strength_applies_unless_overridden():
    from persona.engine.config import generation_config

    defaults = PersonaDefaults.from_dict({"strength": 2})
    assert defaults.strength == 2.0
    assert generation_config(defaults).strength == 2.0
    assert generation_config(defaults, strength=1.0).strength == 1.0
    assert generation_config(None).strength == 1.0


def test_the_api_takes_strength_over_the_persona_s_over_the_server_s():
    from persona.serve.schemas import ChatRequest, Limits, generation_config

    def body(**extra):
        return ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}], **extra)

    server = Limits(strength=1.5)
    mine = PersonaDefaults(strength=2.0)
    assert generation_config(body(), Limits(), None).strength == 1.0
    assert generation_config(body(), server, None).strength == 1.5
    assert generation_config(body(), server, mine).strength == 2.0
    assert generation_config(body(strength=3), server, mine).strength == 3.0
    with pytest.raises(ConfigError, match="strength=12.0 must be from 0 to 10"):
        Limits(strength=12.0)


def test_the_command_line_refuses_a_bad_strength_in_one_line(capsys):
    from tests.helpers import assert_one_line_error, run

    code, _, err = run(capsys, "reply", "--local", "--strength", "-1", "hello")
    assert_one_line_error(code, err, "strength=-1.0 must be from 0 to 10")


def test_persona_set_stores_a_strength(capsys, tmp_path):
    from persona.library import open_library
    from tests.helpers import run
    from tests.library_helpers import make_prompt

    path = tmp_path / "library.db"
    library = open_library(path)
    library.add_version("falstaff", make_prompt(seed=1), description="fat knight")
    library.close()
    code, _, _ = run(capsys, "set", "falstaff", "strength=2.5", "--library", str(path))
    assert code == 0
    library = open_library(path)
    try:
        assert library.get_defaults("falstaff").strength == 2.5
    finally:
        library.close()
    code, _, err = run(capsys, "set", "falstaff", "strength=20", "--library", str(path))
    assert code == 1 and "strength=20.0 must be from 0 to 10" in err
