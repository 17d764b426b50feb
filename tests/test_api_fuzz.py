"""Fuzz the HTTP API in-process: generated JSON bodies (and some that are not JSON) against the
FastAPI app over the tiny model. Every answer is a success or an OpenAI-shaped 4xx, never a 500,
and the app keeps answering."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serving import add_persona, serve_state

pytest.importorskip("httpx2", reason="starlette's TestClient needs httpx2")

TEXT = st.text(max_size=40)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | TEXT
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
PARAMETERS = [
    "temperature", "top_p", "top_k", "repetition_penalty", "max_tokens", "max_completion_tokens",
    "seed", "stop", "stream", "stream_options", "n", "frequency_penalty", "presence_penalty",
    "logit_bias", "logprobs", "top_logprobs", "tools", "tool_choice", "response_format", "user",
    "metadata", "echo", "best_of", "suffix",
]  # fmt: skip
NUMBERS = st.integers(min_value=-5, max_value=300) | st.floats(min_value=-3, max_value=3)
VALUES = NUMBERS | st.booleans() | st.none() | TEXT | st.lists(TEXT, max_size=6) | JSON
PART = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]) | TEXT}) | JSON
MESSAGE = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["system", "developer", "user", "assistant", "tool"]) | JSON,
        "content": TEXT
        | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}))
        | st.lists(PART, max_size=3)
        | JSON,
        "name": TEXT,
    },
)
BODY = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["tiny", "hamlet", "hamlet@1", "hamlet@9", "nobody", ""]) | JSON,
        "messages": st.lists(MESSAGE, max_size=10) | JSON,
        "prompt": TEXT | st.lists(TEXT, max_size=2) | JSON,
        **{name: VALUES for name in PARAMETERS},
        **{f"x_{index}": JSON for index in range(2)},
    },
)

GOOD_VALUES = {  # parameters with values of the right type, in range or just out of it
    "temperature": st.floats(-0.5, 2.5),
    "top_p": st.floats(-0.1, 1.1),
    "top_k": st.integers(-1, 5000),
    "repetition_penalty": st.floats(-0.1, 12),
    "max_tokens": st.integers(-1, 5),
    "max_completion_tokens": st.integers(0, 5),
    "seed": st.integers(-(2**64), 2**65),
    "stop": TEXT | st.lists(TEXT, max_size=5),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "n": st.integers(0, 2),
    "frequency_penalty": st.floats(-1, 1),
    "logprobs": st.booleans(),
    "user": TEXT,
}
VALID_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"]), "content": TEXT}
)
PLAUSIBLE = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["tiny", "hamlet", "hamlet@1", "nobody"]),
        "messages": st.lists(VALID_MESSAGE, min_size=1, max_size=7),
        "prompt": TEXT,
    },
).flatmap(
    lambda body: st.dictionaries(st.sampled_from(list(GOOD_VALUES)), st.none(), max_size=3).flatmap(
        lambda names: st.fixed_dictionaries({name: GOOD_VALUES[name] for name in names}).map(
            lambda chosen: {**body, **chosen}
        )
    )
)


@pytest.fixture(scope="module", params=["serial", "batch"])
def api(request, tiny_model_dir, tmp_path_factory):
    from starlette.testclient import TestClient

    from persona.engine.chat import ChatEngine
    from persona.engine.runners import runner_for
    from persona.model.loader import load_chat_model
    from persona.serve.app import create_app
    from persona.serve.schemas import Limits

    loaded = load_chat_model(tiny_model_dir)
    library = tmp_path_factory.mktemp("fuzz-home") / "library.db"
    add_persona(library, "hamlet", loaded.fingerprint, seed=3)
    state = serve_state(
        runner_for(ChatEngine(loaded), request.param, max_queue=4),
        library,
        limits=Limits(max_tokens=3, max_messages=8),
        fingerprint=loaded.fingerprint,
        max_body_bytes=4096,
    )
    with TestClient(create_app(state), raise_server_exceptions=False) as client:
        yield client
    state.runner.close()
    state.catalog.library.close()


def check(response) -> None:
    assert response.status_code in (200, 400, 404, 413), (response.status_code, response.text)
    if response.status_code != 200:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"]
        assert error["type"] == "invalid_request_error"


FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(body=BODY | PLAUSIBLE, route=st.sampled_from(["/v1/chat/completions", "/v1/completions"]))
def test_generated_bodies_never_make_a_500(api, body, route):
    content = json.dumps(body).encode()  # NaN and Infinity included, as Python's json writes them
    check(api.post(route, content=content, headers={"Content-Type": "application/json"}))


@FUZZ
@given(raw=st.binary(max_size=300) | JSON.map(lambda value: json.dumps(value).encode()))
def test_bodies_that_are_not_requests_are_a_400(api, raw):
    response = api.post("/v1/chat/completions", content=raw)
    check(response)
    assert response.status_code == 400


def test_the_app_still_answers_after_the_fuzz(api):
    assert api.get("/health").json() == {"status": "ok"}
    models = api.get("/v1/models").json()["data"]
    assert {model["id"] for model in models} >= {"hamlet"}
