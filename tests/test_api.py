"""`persona serve` through the real `openai` client: a real server process on a free loopback port,
the personas of a temp library as models, replies equal to the chat engine's own."""

from __future__ import annotations

import http.client
import json
import re
import urllib.parse

import openai
import pytest

from persona.library import open_library
from tests.serving import ServerProcess, add_persona

API_KEY = "test-key-1234"
MAX_BODY_BYTES = 65536
GREEDY = {"temperature": 0, "max_tokens": 12}


@pytest.fixture(scope="module")
def library_home(tmp_path_factory, tiny):
    home = tmp_path_factory.mktemp("serve-home")
    library = home / "library.db"
    add_persona(library, "hamlet", tiny.fingerprint, seed=1, description="the Dane")
    add_persona(library, "juliet", tiny.fingerprint, seed=2, description="of Verona")
    add_persona(library, "lear", tiny.fingerprint, seed=4)
    opened = open_library(library)
    try:  # what `persona set lear --temperature 0 --max-tokens 3` stores
        opened.set_defaults("lear", {"temperature": 0, "max_new_tokens": 3})
    finally:
        opened.close()
    return home


@pytest.fixture(scope="module")
def server(library_home, tiny_model_dir):
    flags = ["--model", str(tiny_model_dir), "--api-key", API_KEY, "--save-conversations"]
    flags += ["--max-body-bytes", str(MAX_BODY_BYTES), "--max-tokens", "64"]
    running = ServerProcess(library_home, flags)
    yield running
    assert running.stop() == 0, "".join(running.lines)
    assert "server stopped" in "".join(running.lines)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url, api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from persona.engine.chat import ChatEngine
    from persona.model.loader import load_chat_model

    return ChatEngine(load_chat_model(tiny_model_dir, precision="auto"))  # as the server loads it


def local_reply(engine, library_home, messages, persona, **config):
    """What ChatEngine gives here for the same persona, messages and settings."""
    from persona.engine.config import GenerationConfig
    from persona.library import open_library

    library = open_library(library_home / "library.db")
    try:
        prompt = library.get_prompt(persona) if persona else None
    finally:
        library.close()
    generation = GenerationConfig(temperature=0, max_new_tokens=config.get("max_tokens", 12))
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system") or None
    turns = [m for m in messages if m["role"] != "system"]
    text = engine.reply(turns, prompt, generation, system=system)
    return text, engine.last, prompt


def post(server, path: str, body: bytes, headers: dict[str, str] | None = None):
    """A raw request, for what the openai client never sends."""
    url = urllib.parse.urlsplit(server.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        connection.request("POST", path, body, headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}


def test_every_persona_is_a_model_and_so_is_the_bare_model(client, tiny_model_dir):
    models = {model.id: model for model in client.models.list()}
    assert set(models) == {"hamlet", "juliet", "lear", tiny_model_dir.name}
    assert all(m.object == "model" and m.owned_by == "persona" for m in models.values())
    assert models["hamlet"].model_extra["description"] == "the Dane"
    assert client.models.retrieve("juliet").id == "juliet"


def test_a_chat_completion_is_the_engine_s_reply(client, engine, library_home):
    messages = [{"role": "user", "content": "What is the question?"}]
    answer = client.chat.completions.create(model="hamlet", messages=messages, **GREEDY)
    text, stats, prompt = local_reply(engine, library_home, messages, "hamlet")
    assert answer.choices[0].message.content == text and text
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].finish_reason == (
        "length" if stats.finish_reason == "length" else "stop"
    )
    # prompt tokens count the persona's virtual tokens: they take room in the window like any other
    assert answer.usage.prompt_tokens == stats.prompt_tokens + prompt.num_virtual_tokens
    assert answer.usage.completion_tokens == stats.new_tokens
    assert answer.model == "hamlet" and answer.object == "chat.completion"


def test_a_streamed_completion_is_the_same_reply_in_chunks(client, engine, library_home):
    messages = [
        {"role": "system", "content": "Speak in verse."},
        {"role": "user", "content": "Hello there"},
    ]
    stream = client.chat.completions.create(
        model="juliet",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
        **GREEDY,
    )
    chunks = list(stream)
    text, stats, prompt = local_reply(engine, library_home, messages, "juliet")
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    with_choices = [chunk for chunk in chunks if chunk.choices]
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in with_choices)
    assert streamed == text
    assert with_choices[-1].choices[0].finish_reason in ("stop", "length")
    assert all(chunk.choices[0].finish_reason is None for chunk in with_choices[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == stats.new_tokens
    assert last.usage.prompt_tokens == stats.prompt_tokens + prompt.num_virtual_tokens


def test_a_conversation_may_change_persona_between_turns_and_is_saved(client, engine, library_home):
    from persona.library import open_library

    first = [{"role": "user", "content": "Who goes there?"}]
    answer = client.chat.completions.create(model="hamlet", messages=first, **GREEDY)
    reply = answer.choices[0].message.content
    second = [*first, {"role": "assistant", "content": reply}, {"role": "user", "content": "Hi"}]
    answer = client.chat.completions.create(model="juliet", messages=second, **GREEDY)
    assert reply == local_reply(engine, library_home, first, "hamlet")[0]
    assert (
        answer.choices[0].message.content == local_reply(engine, library_home, second, "juliet")[0]
    )

    library = open_library(library_home / "library.db")
    try:
        saved = [c for c in library.list_conversations() if c.title == "Who goes there?"]
        assert len(saved) == 1  # the second request continued the first one's conversation
        messages = library.get_messages(saved[0].id)
    finally:
        library.close()
    assert [(m.role, m.persona) for m in messages] == [
        ("user", None),
        ("assistant", "hamlet"),
        ("user", None),
        ("assistant", "juliet"),
    ]


def test_a_stop_string_cuts_the_reply_before_it(client, engine, library_home):
    messages = [{"role": "user", "content": "To be, or not to be"}]
    text = local_reply(engine, library_home, messages, "hamlet")[0]
    assert len(text) > 4
    stop = text[3:5]
    answer = client.chat.completions.create(
        model="hamlet", messages=messages, stop=["never-there", stop], **GREEDY
    )
    assert answer.choices[0].message.content == text[: text.index(stop)]
    assert answer.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(
        model="hamlet", messages=messages, stop=stop, stream=True, **GREEDY
    )
    chunks = [chunk for chunk in stream if chunk.choices]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text[: text.index(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_an_unknown_persona_is_a_404_model_not_found(client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(
            model="ophelia", messages=[{"role": "user", "content": "hi"}]
        )
    assert raised.value.code == "model_not_found" and raised.value.param == "model"
    assert "ophelia" in raised.value.message


@pytest.mark.parametrize(
    ("param", "extra"),
    [
        ("temperature", {"temperature": 7}),
        ("frequency_penalty", {"frequency_penalty": 0.5}),
        ("n", {"n": 2}),
        ("tools", {"tools": [{"type": "function", "function": {"name": "f"}}]}),
        ("max_tokens", {"max_tokens": 100000}),
        ("stop", {"stop": ["a", "b", "c", "d", "e"]}),
        ("messages[0].role", {"messages": [{"role": "tool", "content": "x"}]}),
    ],
)
def test_a_bad_parameter_is_a_400_naming_it(client, param, extra):
    body = {"model": "hamlet", "messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(**body)
    assert raised.value.param == param and param.split("[")[0] in raised.value.message


def test_harmless_parameters_are_accepted(client):
    answer = client.chat.completions.create(
        model="hamlet",
        messages=[{"role": "user", "content": "hi"}],
        user="someone",
        frequency_penalty=0,
        n=1,
        logprobs=False,
        max_completion_tokens=3,
        temperature=0,
    )
    assert answer.usage.completion_tokens <= 3


def test_a_body_that_is_not_json_is_a_400(server):
    status, _, body = post(server, "/v1/chat/completions", b'{"model": "hamlet", ', AUTH)
    error = json.loads(body)["error"]
    assert status == 400 and error["code"] == "invalid_json" and error["type"]


def test_a_body_too_large_is_a_413(client):
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(
            model="hamlet", messages=[{"role": "user", "content": "x" * MAX_BODY_BYTES}]
        )
    assert raised.value.status_code == 413 and raised.value.code == "body_too_large"


def test_a_missing_or_wrong_api_key_is_a_401(server):
    for key in ("wrong-key", ""):
        wrong = openai.OpenAI(base_url=server.url, api_key=key or "x", max_retries=0)
        if not key:
            wrong = wrong.with_options(default_headers={"Authorization": ""})
        with pytest.raises(openai.AuthenticationError) as raised:
            wrong.models.list()
        assert raised.value.status_code == 401


def test_health_is_open_and_metrics_count_what_was_served(server, client):
    url = urllib.parse.urlsplit(server.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    connection.request("GET", "/health")
    assert connection.getresponse().status == 200
    connection.close()
    client.chat.completions.create(
        model="hamlet", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    metrics = _metrics(server)
    assert re.search(r'^persona_requests_total\{status="200"\} [1-9]', metrics, re.M)
    assert re.search(r"^persona_generated_tokens_total [1-9]", metrics, re.M)
    for name in ("persona_queue_depth", "persona_active_rows", "persona_tokens_per_second"):
        assert re.search(rf"^{name} [0-9.]+$", metrics, re.M)


def _metrics(server) -> str:
    url = urllib.parse.urlsplit(server.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        connection.request("GET", "/metrics", headers={"Authorization": f"Bearer {API_KEY}"})
        response = connection.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        connection.close()


def test_a_version_of_a_persona_is_a_model_too(client):
    assert client.models.retrieve("hamlet@1").model_extra["persona"] == "hamlet"
    answer = client.chat.completions.create(
        model="hamlet@1", messages=[{"role": "user", "content": "hi"}], **GREEDY
    )
    same = client.chat.completions.create(
        model="hamlet", messages=[{"role": "user", "content": "hi"}], **GREEDY
    )
    assert answer.choices[0].message.content == same.choices[0].message.content
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("hamlet@7")


def test_a_raw_completion_continues_the_text_after_the_soft_prompt(client):
    answer = client.completions.create(model="hamlet", prompt="To be, or not", max_tokens=5)
    assert answer.object == "text_completion" and answer.choices[0].finish_reason
    assert answer.usage.completion_tokens <= 5 and answer.usage.prompt_tokens > 4
    streamed = client.completions.create(
        model="hamlet", prompt="To be, or not", max_tokens=5, temperature=0, stream=True
    )
    assert all(chunk.object == "text_completion" for chunk in streamed)


def test_a_persona_s_own_defaults_apply_where_the_request_names_none(client):
    hello = [{"role": "user", "content": "Hello there"}]
    short = client.chat.completions.create(model="lear", messages=hello)
    assert short.usage.completion_tokens <= 3  # lear's max_new_tokens
    again = client.chat.completions.create(model="lear", messages=hello)
    assert again.choices[0].message.content == short.choices[0].message.content  # greedy
    longer = client.chat.completions.create(model="lear", messages=hello, max_tokens=8)
    assert longer.usage.completion_tokens > 3 or longer.choices[0].finish_reason == "stop"


def test_strength_is_an_extension_field_and_gives_the_engine_s_guided_reply(
    client, engine, library_home
):
    from persona.engine.config import GenerationConfig
    from persona.library import open_library

    messages = [{"role": "user", "content": "What is the question?"}]
    library = open_library(library_home / "library.db")
    try:
        prompt = library.get_prompt("hamlet")
    finally:
        library.close()
    guided = engine.reply(
        messages, prompt, GenerationConfig(temperature=0, max_new_tokens=12, strength=3.0)
    )
    answer = client.chat.completions.create(
        model="hamlet", messages=messages, extra_body={"strength": 3.0}, **GREEDY
    )
    assert answer.choices[0].message.content == guided
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model="hamlet", messages=messages, extra_body={"strength": 11}, **GREEDY
        )
    assert "strength" in raised.value.message
