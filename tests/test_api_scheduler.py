"""The scheduler side of `persona serve`: stop strings, the serial scheduler's queue limit (429 with
Retry-After through the real openai client) and a client that leaves freeing its row."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import openai
import pytest

from persona.engine.serial import SerialRunner
from persona.engine.stops import StopScanner
from tests.serving import serve_state, serving_app


def scan(stops, pieces):
    scanner = StopScanner(stops)
    sent = [scanner.push(piece) for piece in pieces]
    return sent, scanner.flush(), scanner.stopped


def test_a_stop_string_split_across_pieces_is_never_sent():
    sent, tail, stopped = scan(["STOP"], ["Hello ST", "O", "P and more"])
    assert sent == ["Hello ", "", ""] and tail == "" and stopped


def test_text_that_only_looked_like_a_stop_string_is_released():
    sent, tail, stopped = scan(["STOP"], ["Hello ST", "ay", " here S"])
    assert "".join(sent) == "Hello STay here " and tail == "S" and not stopped


def test_the_earliest_of_several_stop_strings_wins():
    sent, _, stopped = scan(["world", "lo"], ["Hello world"])
    assert sent == ["Hel"] and stopped


def test_without_stop_strings_everything_passes_at_once():
    assert scan([], ["a", "b"]) == (["a", "b"], "", False)


class SlowEngine:
    """Stands in for ChatEngine: the first piece at once, the rest when `release` is set (or
    `cancel`, which it records)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.cancelled = threading.Event()
        self.last = SimpleNamespace(prompt_tokens=0, new_tokens=0, finish_reason="")
        self.backend = SimpleNamespace(name="torch", layout=None)

    def prepare(self, request):
        request.ids = [1, 2, 3, 4, 5]
        return request.ids, 0

    def run(self, request, *, cancel=None):
        self.last = SimpleNamespace(prompt_tokens=5, new_tokens=0, finish_reason="length")
        for index, piece in enumerate(["Hel", "lo", " there"]):
            if index and not self._wait(cancel):
                self.cancelled.set()
                self.last.finish_reason = "cancelled"
                return
            self.last.new_tokens += 1
            yield piece

    def _wait(self, cancel) -> bool:
        while not self.release.wait(0.01):
            if cancel is not None and cancel.is_set():
                return False
        return True


@pytest.fixture
def slow(tmp_path):
    engine = SlowEngine()
    state = serve_state(SerialRunner(engine, max_queue=0), tmp_path / "library.db")
    with serving_app(state) as url:
        yield engine, openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=30)
    engine.release.set()


HELLO = [{"role": "user", "content": "hi"}]


def test_a_full_queue_is_a_429_with_retry_after(slow):
    engine, client = slow
    first = client.chat.completions.create(model="tiny", messages=HELLO, stream=True)
    assert next(iter(first)).choices[0].delta.role == "assistant"  # its reply is being made
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model="tiny", messages=HELLO)
    assert raised.value.code == "queue_full"
    assert int(raised.value.response.headers["Retry-After"]) >= 1
    engine.release.set()
    rest = "".join(chunk.choices[0].delta.content or "" for chunk in first if chunk.choices)
    assert rest.endswith(" there")
    answer = client.chat.completions.create(model="tiny", messages=HELLO)  # room again
    assert answer.choices[0].message.content == "Hello there"


def test_a_client_that_leaves_mid_reply_frees_its_row(slow):
    engine, client = slow
    stream = client.chat.completions.create(model="tiny", messages=HELLO, stream=True)
    next(iter(stream))
    stream.close()
    assert engine.cancelled.wait(10)  # the engine was told to stop
    engine.release.set()
    answer = client.chat.completions.create(model="tiny", messages=HELLO)
    assert answer.choices[0].message.content == "Hello there"


def _status_counts(url: str) -> dict[str, int]:
    import re
    import urllib.request

    with urllib.request.urlopen(url.removesuffix("/v1") + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        status: int(count)
        for status, count in re.findall(r'persona_requests_total\{status="(\d+)"\} (\d+)', text)
    }


def test_a_client_that_leaves_before_its_body_is_sent_is_not_counted_as_a_server_error(slow):
    import socket
    from urllib.parse import urlparse

    engine, client = slow
    engine.release.set()
    url = str(client.base_url).rstrip("/")
    address = urlparse(url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 500\r\n\r\n{"model": '
        )  # the client leaves with most of its body unsent
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "499" not in _status_counts(url):
        time.sleep(0.05)
    counts = _status_counts(url)
    assert counts.get("499") == 1
    assert "500" not in counts
