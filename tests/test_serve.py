"""`persona reply` answers through a running `persona serve` (the OpenAI API over the owner-only
socket): the same reply, without torch; a server that cannot or does not answer is passed over."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading

import pytest

from persona.cli.main import main
from persona.serve.identity import socket_path
from tests.serving import running_server


@pytest.fixture
def server(tiny_model_dir):
    with running_server("--model", str(tiny_model_dir)) as running:
        yield running


def no_local_model(monkeypatch):
    """From here on a reply that loads a model itself fails: what succeeds was answered by the server."""
    import persona.model.loader as loader

    def refuse(*args, **kwargs):
        raise AssertionError("the reply loaded a model instead of asking the server")

    monkeypatch.setattr(loader, "load_chat_model", refuse)


def reply(capsys, *arguments):
    code = main(["reply", "--temperature", "0", "--max-tokens", "8", *arguments])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_socket_is_the_owners_alone(server):
    mode = stat.S_IMODE(os.stat(server.path).st_mode)
    assert mode == 0o600 and stat.S_ISSOCK(os.stat(server.path).st_mode)


def test_a_reply_through_the_server_equals_a_local_one(server, tiny_model_dir, capsys, monkeypatch):
    model = ["--model", str(tiny_model_dir), "--no-persona"]
    # `auto` precision on both sides: int8 where torch has its kernel, batched rows computing
    # exactly what chat computes
    local_code, local, _ = reply(capsys, *model, "--json", "--local", "hello there")
    no_local_model(monkeypatch)
    code, served, _ = reply(capsys, *model, "--json", "hello there")
    assert code == local_code == 0
    served_record, local_record = json.loads(served), json.loads(local)
    served_record.pop("seconds"), local_record.pop("seconds")
    assert served_record == local_record and served_record["reply"]
    assert list(json.loads(served)) == list(json.loads(local))  # the same keys, in order
    code, streamed, _ = reply(capsys, *model, "hello there")
    assert code == 0 and streamed.strip() == local_record["reply"].strip()
    code, with_system, _ = reply(capsys, *model, "--json", "--system", "Be brief.", "hello there")
    assert code == 0 and "Be brief." in json.loads(with_system)["prompt"]


def test_the_socket_needs_no_api_key(tiny_model_dir, capsys, monkeypatch):
    with running_server("--model", str(tiny_model_dir), "--api-key", "secret"):
        no_local_model(monkeypatch)
        code, out, _ = reply(capsys, "--model", str(tiny_model_dir), "--no-persona", "hello")
    assert code == 0 and out.strip()  # the owner-only file is the key


def test_a_client_that_left_before_its_reply_leaves_the_server_quiet(
    server, tiny_model_dir, capsys, monkeypatch
):
    body = json.dumps(
        {"model": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    ).encode()
    gone = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    gone.connect(str(server.path))
    gone.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    gone.close()  # as a client does after ACCEPT_TIMEOUT_S
    no_local_model(monkeypatch)
    code, out, err = reply(capsys, "--model", str(tiny_model_dir), "--no-persona", "hello")
    assert code == 0 and out.strip()  # the server went on to the next request
    assert "Traceback" not in err and "Exception" not in err


def test_a_client_answered_by_the_server_never_imports_torch(server, tiny_model_dir):
    code = (
        "import sys; from persona.cli.main import main; "
        f"rc = main(['reply', '--model', {str(tiny_model_dir)!r}, '--no-persona', '--temperature', '0', "
        "'--max-tokens', '4', 'hello']); "
        "print('torch' in sys.modules, rc)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "False 0"


def test_another_precision_or_library_is_answered_locally(server, tiny_model_dir, capsys, tmp_path):
    code, out, _ = reply(
        capsys,
        "--model",
        str(tiny_model_dir),
        "--no-persona",
        "--precision",
        "fp32",
        "--json",
        "hi",
    )
    assert code == 0 and json.loads(out)["precision"] == "fp32"  # the int8 server refused
    elsewhere = tmp_path / "other.db"
    code, out, _ = reply(
        capsys, "--model", str(tiny_model_dir), "--library", str(elsewhere), "--json", "hi"
    )
    assert code == 0 and elsewhere.exists()  # the client opened its own library


def test_server_errors_are_one_line(server, tiny_model_dir, capsys):
    code, _, err = reply(capsys, "--model", str(tiny_model_dir), "--persona", "nobody", "hello")
    assert code == 1 and err.startswith("persona: error:") and "nobody" in err
    assert err.count("\n") == 1


def test_a_second_server_is_refused(server, tiny_model_dir, capsys):
    assert main(["serve", "--model", str(tiny_model_dir), "--port", "0"]) == 1
    assert "already running" in capsys.readouterr().err


def test_a_stale_socket_does_not_stop_a_reply_and_a_new_server_replaces_it(tiny_model_dir, capsys):
    path = socket_path()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # bound but never listening: what a killed server leaves behind
    stale.close()
    code, out, _ = reply(capsys, "--model", str(tiny_model_dir), "--no-persona", "--json", "hello")
    assert code == 0 and json.loads(out)["reply"] is not None
    with running_server("--model", str(tiny_model_dir)) as running:  # replaces the stale file
        assert running.path == path and path.exists()
    assert not path.exists()


def read_request(connection) -> bytes:
    """One whole HTTP request (so that closing the connection does not reset it)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ),
        0,
    )
    while len(body) < length:
        body += connection.recv(65536)
    return data


def fake_server(respond):
    """A socket where `persona serve` would listen, answering each connection with `respond`
    (which gets the connection and the request's first line)."""
    path = socket_path()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)
    done = threading.Event()

    def loop():
        while not done.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            request = read_request(connection)
            respond(connection, request.split(b"\r\n", 1)[0], done)
            connection.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()

    def stop():
        done.set()
        listener.close()
        thread.join(timeout=10)
        path.unlink(missing_ok=True)

    return stop


MODELS = json.dumps({"object": "list", "data": [{"id": "tiny", "persona": None}]}).encode()


def answer_models(connection, first_line) -> bool:
    if first_line.startswith(b"GET /v1/models"):
        connection.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(MODELS), MODELS)
        )
        return True
    return False


HALF_A_REPLY = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
    b'data: {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}\n\n'
    b'data: {"choices": [{"index": 0, "delta": {"content": "Hel"}}]}\n\n'
)


@pytest.mark.parametrize("last_line", [b"", b"data: {not json\n\n"], ids=["closed", "garbled"])
def test_a_server_that_stops_mid_reply_is_a_one_line_error(tiny_model_dir, capsys, last_line):
    def half(connection, first_line, done):
        if not answer_models(connection, first_line):
            connection.sendall(HALF_A_REPLY + last_line)

    stop = fake_server(half)
    try:
        code, out, err = reply(capsys, "--model", str(tiny_model_dir), "--no-persona", "hello")
    finally:
        stop()
    assert code == 1 and out.startswith("Hel")
    assert err.startswith("persona: error:") and "--local" in err and err.count("\n") == 1


def test_a_server_that_never_answers_is_passed_over(tiny_model_dir, capsys, monkeypatch):
    import persona.serve.client as client

    monkeypatch.setattr(client, "ACCEPT_TIMEOUT_S", 0.5)
    stop = fake_server(lambda connection, first_line, done: done.wait(30))
    try:
        code, out, err = reply(capsys, "--model", str(tiny_model_dir), "--no-persona", "hello")
    finally:
        stop()
    assert code == 0 and out.strip()  # answered locally
    assert "did not take the request within 0.5 s" in err and "replying without it" in err


def test_a_server_that_stalls_mid_reply_is_a_one_line_error(tiny_model_dir, capsys, monkeypatch):
    import persona.serve.client as client

    monkeypatch.setattr(client, "STALL_TIMEOUT_S", 0.5)
    no_local_model(monkeypatch)

    def stall(connection, first_line, done):
        if not answer_models(connection, first_line):
            connection.sendall(HALF_A_REPLY)
            done.wait(30)

    stop = fake_server(stall)
    try:
        code, out, err = reply(capsys, "--model", str(tiny_model_dir), "--no-persona", "hello")
    finally:
        stop()
    assert code == 1 and out.startswith("Hel")
    assert err.startswith("persona: error:") and "nothing for 0.5 s" in err and "--local" in err
    assert err.count("\n") == 1


def test_a_busy_server_is_passed_over_at_once(tiny_model_dir, capsys):
    def busy(connection, first_line, done):
        if not answer_models(connection, first_line):
            body = b'{"error": {"message": "busy", "type": "rate_limit_error"}}'
            connection.sendall(
                b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )

    stop = fake_server(busy)
    try:
        code, out, err = reply(capsys, "--model", str(tiny_model_dir), "--no-persona", "hello")
    finally:
        stop()
    assert code == 0 and out.strip()  # answered locally
    assert "queue is full; replying without it" in err


def test_idle_exit_stops_the_server_and_removes_its_socket(tiny_model_dir, capsys, monkeypatch):
    command = [sys.executable, "-m", "persona", "serve", "--port", "0"]
    command += ["--model", str(tiny_model_dir), "--idle-exit", "0.05"]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        for _ in range(1200):  # torch imports, the model loads, then the socket appears
            if socket_path().exists() or server.poll() is not None:
                break
            threading.Event().wait(0.05)
        no_local_model(monkeypatch)
        code, out, _ = reply(
            capsys, "--model", str(tiny_model_dir), "--no-persona", "--json", "hello"
        )
        assert code == 0 and json.loads(out)["reply"] is not None  # answered while it ran
        _, err = server.communicate(timeout=60)  # 3 s after that reply it stops by itself
    finally:
        server.kill()
    assert server.returncode == 0, err
    assert "no request for 0.05 minutes; server stopped" in err
    assert not socket_path().exists()


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf"])
def test_idle_exit_must_be_a_positive_number(value, capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--idle-exit", value])
    assert "must be a positive number of minutes" in capsys.readouterr().err


def test_a_host_other_machines_reach_needs_an_api_key(capsys, monkeypatch):
    monkeypatch.delenv("PERSONA_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("persona: error:") and "--api-key" in err and err.count("\n") == 1


def test_an_empty_api_key_is_refused_not_taken_as_none(capsys, monkeypatch):
    monkeypatch.delenv("PERSONA_API_KEY", raising=False)
    assert main(["serve", "--port", "0", "--api-key", " "]) == 1
    err = capsys.readouterr().err
    assert err.startswith("persona: error:") and "--api-key is empty" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "flag", [["--vllm-url", "http://127.0.0.1:8000"], ["--vllm-dtype", "float16"]]
)
def test_a_vllm_flag_without_the_vllm_backend_is_refused_not_ignored(flag, capsys):
    assert main(["serve", "--port", "0", *flag]) == 1
    err = capsys.readouterr().err
    assert err == f"persona: error: {flag[0]} needs --backend vllm\n"


def test_warm_starts_a_server_that_answers_this_reply_and_the_next_then_stops(
    tiny_model_dir, capsys, monkeypatch
):
    import persona.serve.warm as warm

    started = []

    def recorded(*arguments):
        child = start(*arguments)
        started.append(child)
        return child

    start = warm.start_warm_server
    monkeypatch.setattr(warm, "start_warm_server", recorded)
    no_local_model(monkeypatch)  # every reply below comes from the background server
    model = ["--model", str(tiny_model_dir), "--no-persona", "--json"]
    try:
        code, first, _ = reply(capsys, *model, "--warm", "0.05", "hello")
        assert code == 0 and json.loads(first)["reply"] is not None
        assert len(started) == 1 and socket_path().exists()
        code, second, _ = reply(capsys, *model, "--warm", "0.05", "hello")
        assert code == 0 and json.loads(second)["reply"] == json.loads(first)["reply"]
        assert len(started) == 1  # the running server answered: none started
        assert started[0].wait(timeout=60) == 0  # 3 s without a request: it stops by itself
        assert not socket_path().exists()
        log = (warm.data_dir() / warm.LOG_NAME).read_text()
        assert "no request for 0.05 minutes; server stopped" in log
    finally:
        for child in started:
            child.kill()


def test_warm_comes_from_the_environment_and_a_bad_value_is_one_line(
    tiny_model_dir, capsys, monkeypatch
):
    monkeypatch.setenv("PERSONA_WARM", "soon")
    code, _, err = reply(capsys, "--model", str(tiny_model_dir), "--no-persona", "hello")
    assert code != 0
    assert err.strip().splitlines() == [
        "persona: error: $PERSONA_WARM must be a positive number of minutes, got 'soon'; "
        "unset it to reply without a background server"
    ]


def test_a_background_server_that_fails_to_start_leaves_the_reply_to_this_process(
    tiny_model_dir, capsys, monkeypatch
):
    import persona.serve.warm as warm

    monkeypatch.setattr(
        warm, "serve_command", lambda args, minutes: [sys.executable, "-c", "raise SystemExit(3)"]
    )
    code, out, err = reply(
        capsys, "--model", str(tiny_model_dir), "--no-persona", "--warm", "1", "hello"
    )
    assert code == 0 and out.strip()  # answered here
    assert "the background server stopped before it was ready" in err
    assert "replying without it" in err and str(warm.LOG_NAME) in err
