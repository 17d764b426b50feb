"""The chat client against a real `persona serve` process (the tiny model, two personas): the
server's personas, its replies streamed, the conversation saved in the chat's own library, and a
server that refuses or fails leaving nothing lost."""

from __future__ import annotations

from typing import Any

import pytest

from persona.engine.remote import RemoteRunner
from persona.errors import RemoteError
from persona.tui.app import PersonaChatApp
from persona.tui.backend import remote_backend
from tests.serving import API_KEY, SERVED, serving_home, tiny_server
from tests.tui.conftest import make_prompt
from tests.tui.helpers import bubbles, notifications, send, speakers, status_line

GREEDY = {"temperature": 0, "max_new_tokens": 8}
SIZE = (100, 40)


@pytest.fixture(scope="module")
def server(tmp_path_factory: Any, tiny: Any, tiny_model_dir: Any) -> Any:
    home = serving_home(tmp_path_factory.mktemp("chat-remote-home"), tiny.fingerprint)
    running = tiny_server(home, tiny_model_dir)
    yield running
    running.stop()


def remote_app(server: Any, library: Any, **kwargs: Any) -> PersonaChatApp:
    backend = remote_backend(RemoteRunner(server.url, API_KEY), library)
    return PersonaChatApp(backend, library, overrides=GREEDY, **kwargs)


def saved(library: Any, app: PersonaChatApp) -> list[tuple[str, str | None]]:
    messages = library.get_messages(app.session.conversation_id)
    return [(m.role, m.persona) for m in messages]


async def test_switching_between_the_servers_personas_saves_each_reply_here(
    server: Any, library: Any
) -> None:
    app = remote_app(server, library)
    async with app.run_test(size=SIZE) as pilot:
        assert {speaker.name for speaker in app.personas.available()} == set(SERVED)
        assert "@ " + server.url in status_line(app)
        await send(pilot, "/persona falstaff")
        await send(pilot, "Who are you?")
        await send(pilot, "/persona juliet")
        await send(pilot, "And you?")
        assert speakers(app) == ["you", "falstaff", "you", "juliet"]
        first, second = bubbles(app)[1][2], bubbles(app)[3][2]
        assert first.strip() and second.strip() and first != second
        assert not [n for n in notifications(app) if n[0] == "error"]
    assert saved(library, app) == [
        ("user", None),
        ("assistant", "falstaff"),
        ("user", None),
        ("assistant", "juliet"),
    ]
    assert library.get_messages(app.session.conversation_id)[1].content == first


async def test_a_refused_key_is_one_line_and_retry_works_once_it_is_right(
    server: Any, library: Any
) -> None:
    app = remote_app(server, library, persona="falstaff")
    async with app.run_test(size=SIZE) as pilot:
        app.state.backend.runner.api_key = "a-stale-key"
        await send(pilot, "Are you there?")
        errors = [message for severity, message in notifications(app) if severity == "error"]
        assert len(errors) == 1 and "refused the API key" in errors[0] and "\n" not in errors[0]
        assert speakers(app) == ["you"]  # the question stays, nothing else appeared
        assert saved(library, app) == [("user", None)]
        app.state.backend.runner.api_key = API_KEY
        await send(pilot, "/retry")
        assert speakers(app) == ["you", "falstaff"]
    assert saved(library, app) == [("user", None), ("assistant", "falstaff")]


async def test_a_persona_the_server_lacks_is_one_line(server: Any, library: Any) -> None:
    app = remote_app(server, library)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "/persona hamlet")
        errors = [message for severity, message in notifications(app) if severity == "error"]
        assert errors == [
            f"the server at {server.url} has no persona 'hamlet'; /personas lists what it serves"
        ]
        assert app.personas.name is None


async def test_a_persona_the_local_library_knows_brings_its_greeting(
    server: Any, library: Any, tiny: Any
) -> None:
    library.add_version("juliet", make_prompt(tiny, "juliet", "of Verona", 7))
    library.set_defaults("juliet", {"greeting": "Wherefore art thou here?"})
    app = remote_app(server, library, persona="juliet")
    async with app.run_test(size=SIZE):
        assert bubbles(app)[0][1:] == ("assistant", "Wherefore art thou here?")


def test_a_server_that_is_down_refuses_to_start(library: Any) -> None:
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with pytest.raises(RemoteError, match="cannot reach the server"):
        remote_backend(RemoteRunner(f"http://127.0.0.1:{port}/v1"), library)
