"""RemoteRunner: the generation contract over a real `persona serve` process on the tiny model."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from persona.engine.config import GenerationConfig
from persona.engine.contract import Request
from persona.engine.remote import RemoteRunner
from persona.errors import ConfigError, NotFoundError, PersonaError, RemoteError
from tests.serving import API_KEY, SERVED, serving_home, tiny_server

GREEDY = GenerationConfig(temperature=0, max_new_tokens=8)
ASK = [{"role": "user", "content": "Who are you?"}]


class Collect:
    """A sink that keeps what it was given and says when the reply has ended."""

    def __init__(self, cancel_after: int | None = None) -> None:
        self.pieces: list[str] = []
        self.ended: tuple[str, ...] | None = None
        self.failed: PersonaError | None = None
        self.done = threading.Event()
        self.cancel_after = cancel_after
        self.cancelled = threading.Event()

    def piece(self, text: str) -> None:
        self.pieces.append(text)
        if self.cancel_after is not None and len(self.pieces) >= self.cancel_after:
            self.cancelled.set()

    def finish(self, reason: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.ended = (reason, prompt_tokens, completion_tokens)
        self.done.set()

    def error(self, error: PersonaError) -> None:
        self.failed = error
        self.done.set()


def run(runner: RemoteRunner, request: Request, sink: Collect | None = None) -> Collect:
    sink = sink or Collect()
    runner.submit(request, sink, sink.cancelled)
    assert sink.done.wait(60), "the reply never ended"
    return sink


@pytest.fixture(scope="module")
def server(tmp_path_factory: Any, tiny: Any, tiny_model_dir: Any) -> Any:
    from persona.library import open_library

    home = serving_home(tmp_path_factory.mktemp("remote-home"), tiny.fingerprint)
    library = open_library(home / "library.db")
    try:  # what `persona set juliet --max-tokens 3` stores, on the server's side
        library.set_defaults("juliet", {"max_new_tokens": 3})
    finally:
        library.close()
    running = tiny_server(home, tiny_model_dir)
    yield running
    running.stop()


@pytest.fixture
def runner(server: Any) -> Any:
    runner = RemoteRunner(server.url, API_KEY)
    yield runner
    runner.close()


def test_the_server_lists_its_personas(runner: RemoteRunner) -> None:
    personas = {entry["id"] for entry in runner.models() if entry.get("persona")}
    assert personas == set(SERVED)


def test_a_persona_named_by_its_model_id_streams_a_reply(runner: RemoteRunner) -> None:
    sink = run(runner, Request(ASK, None, GREEDY, model="falstaff"))
    assert sink.failed is None and sink.pieces
    reason, prompt_tokens, completion_tokens = sink.ended
    assert reason in ("stop", "length") and prompt_tokens > 4 and 0 < completion_tokens <= 8
    again = run(runner, Request(ASK, None, GREEDY, model="falstaff"))
    assert "".join(again.pieces) == "".join(sink.pieces)  # greedy: the same persona, the same words
    other = run(runner, Request(ASK, None, GREEDY, model="juliet"))
    assert "".join(other.pieces) != "".join(sink.pieces)  # another persona answers otherwise


def test_settings_left_at_the_built_in_defaults_are_the_servers_to_fill(
    runner: RemoteRunner,
) -> None:
    sink = run(runner, Request(ASK, None, GenerationConfig(temperature=0), model="juliet"))
    assert sink.ended[0] == "length" and sink.ended[2] == 3  # juliet's own limit on the server
    sink = run(runner, Request(ASK, None, GREEDY, model="juliet"))
    assert sink.ended[2] > 3  # a limit the chat gave is sent


def test_a_stop_string_is_cut(runner: RemoteRunner) -> None:
    whole = "".join(run(runner, Request(ASK, None, GREEDY, model="falstaff")).pieces)
    stop = whole[len(whole) // 2 :][:3]
    assert stop.strip()
    cut = run(runner, Request(ASK, None, GREEDY, stop=[stop], model="falstaff"))
    assert "".join(cut.pieces) == whole[: whole.index(stop)] and cut.ended[0] == "stop"


def test_cancelling_closes_the_stream(runner: RemoteRunner) -> None:
    long = GenerationConfig(temperature=0, max_new_tokens=64)
    sink = run(runner, Request(ASK, None, long, model="juliet"), Collect(cancel_after=1))
    assert sink.ended[0] == "cancelled" and len(sink.pieces) < 64
    deadline = time.monotonic() + 5
    while runner.metrics()["active_rows"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert runner.metrics()["active_rows"] == 0  # the request's thread has ended


def test_a_wrong_key_is_one_line_naming_the_fix(server: Any) -> None:
    runner = RemoteRunner(server.url, "not-the-key")
    with pytest.raises(RemoteError, match="refused the API key.*--api-key"):
        runner.models()
    sink = run(runner, Request(ASK, None, GREEDY, model="falstaff"))
    assert isinstance(sink.failed, RemoteError) and "401" in str(sink.failed)


def test_a_persona_the_server_lacks_is_not_found(runner: RemoteRunner) -> None:
    sink = run(runner, Request(ASK, None, GREEDY, model="hamlet"))
    assert isinstance(sink.failed, NotFoundError) and "'hamlet'" in str(sink.failed)


def test_a_server_that_is_down_is_one_line() -> None:
    import socket

    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    runner = RemoteRunner(f"http://127.0.0.1:{port}/v1")
    with pytest.raises(RemoteError, match="cannot reach the server at http://127.0.0.1"):
        runner.models()
    sink = run(runner, Request(ASK, None, GREEDY, model="falstaff"))
    assert isinstance(sink.failed, RemoteError) and "\n" not in str(sink.failed)


@pytest.mark.parametrize("url", ["ftp://host/v1", "http://", "http://host:port/v1"])
def test_an_address_that_is_not_a_server_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="not a server's address"):
        RemoteRunner(url)


def test_a_url_without_a_path_means_its_v1() -> None:
    assert RemoteRunner("localhost:8000").base_url == "http://localhost:8000/v1"
