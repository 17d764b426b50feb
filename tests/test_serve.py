"""`persona serve`: `persona reply` answers through a running server, the same reply, without torch."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading

import pytest

from persona.cli.main import main
from persona.server import socket_path, start_server


@pytest.fixture
def server(tiny_model_dir):
    args = argparse.Namespace(
        model=str(tiny_model_dir), precision="auto", backend="torch", gguf=None
    )
    running, path = start_server(args)
    thread = threading.Thread(target=running.serve_forever, daemon=True)
    thread.start()
    yield path
    running.shutdown()
    running.server_close()
    path.unlink(missing_ok=True)
    thread.join(timeout=10)


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


def test_a_reply_through_the_server_equals_a_local_one(server, tiny_model_dir, capsys, monkeypatch):
    model = ["--model", str(tiny_model_dir), "--no-persona"]
    local_code, local, _ = reply(capsys, *model, "--json", "--local", "hello there")
    no_local_model(monkeypatch)
    code, served, _ = reply(capsys, *model, "--json", "hello there")
    assert code == local_code == 0
    served_record, local_record = json.loads(served), json.loads(local)
    served_record.pop("seconds"), local_record.pop("seconds")
    assert served_record == local_record and served_record["reply"]
    code, streamed, _ = reply(capsys, *model, "hello there")
    assert code == 0 and streamed.strip() == local_record["reply"].strip()


def test_a_client_that_gave_up_before_its_request_was_taken_leaves_the_server_quiet(
    server, tiny_model_dir, capsys, monkeypatch
):
    import socket

    from persona.server import PROTOCOL, identity

    args = argparse.Namespace(
        model=str(tiny_model_dir), precision="auto", backend="torch", gguf=None
    )
    request = {
        "protocol": PROTOCOL,
        "identity": identity(args),
        "message": "hi",
        "persona": None,
        "no_persona": True,
        "library": None,
        "system": None,
        "json": True,
        "generation": {"max_new_tokens": 4},
    }
    gone = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    gone.connect(str(server))
    gone.sendall(json.dumps(request).encode() + b"\n")
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


def test_another_precision_is_answered_locally(server, tiny_model_dir, capsys):
    code, out, _ = reply(
        capsys,
        "--model",
        str(tiny_model_dir),
        "--no-persona",
        "--precision",
        "fp32",
        "--json",
        "hello",
    )
    assert (
        code == 0 and json.loads(out)["precision"] == "fp32"
    )  # the int8 server refused; the client ran itself


def test_server_errors_are_one_line(server, tiny_model_dir, capsys):
    code, _, err = reply(capsys, "--model", str(tiny_model_dir), "--persona", "nobody", "hello")
    assert (
        code == 1 and err.startswith("persona: error:") and "nobody" in err and err.count("\n") == 1
    )


def test_a_second_server_is_refused(server, tiny_model_dir, capsys):
    assert main(["serve", "--model", str(tiny_model_dir)]) == 1
    assert "already running" in capsys.readouterr().err


def test_a_stale_socket_does_not_stop_a_reply_and_a_new_server_replaces_it(tiny_model_dir, capsys):
    import socket

    path = socket_path()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # bound but never listening: what a killed server leaves behind
    stale.close()
    code, out, _ = reply(capsys, "--model", str(tiny_model_dir), "--no-persona", "--json", "hello")
    assert code == 0 and json.loads(out)["reply"] is not None
    args = argparse.Namespace(
        model=str(tiny_model_dir), precision="auto", backend="torch", gguf=None
    )
    running, bound = start_server(args)  # replaces the stale file
    running.server_close()
    bound.unlink()


@pytest.mark.parametrize("last_line", [b"", b"{not json\n"], ids=["closed", "garbled"])
def test_a_server_that_stops_mid_reply_is_a_one_line_error(tiny_model_dir, capsys, last_line):
    import socket

    path = socket_path()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def half_a_reply():
        connection, _ = listener.accept()
        connection.makefile("r").readline()
        connection.sendall(b'{"accepted": true}\n{"piece": "Hel"}\n' + last_line)
        connection.close()

    thread = threading.Thread(target=half_a_reply, daemon=True)
    thread.start()
    try:
        code, out, err = reply(capsys, "--model", str(tiny_model_dir), "--no-persona", "hello")
    finally:
        thread.join(timeout=10)
        listener.close()
        path.unlink(missing_ok=True)
    assert code == 1 and out.startswith("Hel")
    assert err.startswith("persona: error:") and "--local" in err and err.count("\n") == 1


def silent_listener(after_accepting: bytes | None):
    """A socket where `persona serve` would listen that takes the connection and then goes quiet:
    before accepting the request (after_accepting None), or after sending `after_accepting`."""
    import socket

    path = socket_path()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    done = threading.Event()

    def quiet():
        connection, _ = listener.accept()
        connection.makefile("r").readline()
        if after_accepting is not None:
            connection.sendall(after_accepting)
        done.wait(30)  # never answers while the client waits
        connection.close()

    thread = threading.Thread(target=quiet, daemon=True)
    thread.start()

    def stop():
        done.set()
        thread.join(timeout=10)
        listener.close()
        path.unlink(missing_ok=True)

    return stop


def test_a_server_that_never_takes_the_request_is_passed_over(tiny_model_dir, capsys, monkeypatch):
    import persona.server as server_module

    monkeypatch.setattr(server_module, "ACCEPT_TIMEOUT_S", 0.5)
    stop = silent_listener(after_accepting=None)
    try:
        code, out, err = reply(capsys, "--model", str(tiny_model_dir), "--no-persona", "hello")
    finally:
        stop()
    assert code == 0 and out.strip()  # answered locally
    assert "did not take the request within 0.5 s" in err and "replying without it" in err


def test_a_server_that_stalls_mid_reply_is_a_one_line_error(tiny_model_dir, capsys, monkeypatch):
    import persona.server as server_module

    monkeypatch.setattr(server_module, "STALL_TIMEOUT_S", 0.5)
    no_local_model(monkeypatch)
    stop = silent_listener(after_accepting=b'{"accepted": true}\n{"piece": "Hel"}\n')
    try:
        code, out, err = reply(capsys, "--model", str(tiny_model_dir), "--no-persona", "hello")
    finally:
        stop()
    assert code == 1 and out.startswith("Hel")
    assert (
        err.startswith("persona: error:")
        and "nothing for 0.5 s" in err
        and "--local" in err
        and err.count("\n") == 1
    )


def test_idle_exit_stops_the_server_and_removes_its_socket(tiny_model_dir, capsys, monkeypatch):
    command = [
        sys.executable,
        "-m",
        "persona",
        "serve",
        "--model",
        str(tiny_model_dir),
        "--idle-exit",
        "0.05",
    ]
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
        assert (
            code == 0 and json.loads(out)["reply"] is not None
        )  # the server answered while it ran
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
