"""The cyclic collector is off while `persona` starts and back on once a command's model is ready."""

from __future__ import annotations

import gc

import pytest

from persona.cli import main as cli
from persona.cli import startup


@pytest.fixture
def unfrozen():
    gc.unfreeze()
    yield
    gc.unfreeze()  # what a test froze goes back to the collector
    gc.enable()


def test_the_collector_is_off_during_a_command_and_on_after_it(unfrozen, monkeypatch):
    seen = []
    build_parser = cli.build_parser

    def building(*args):
        seen.append(gc.isenabled())  # the command's modules are imported from here on
        return build_parser(*args)

    monkeypatch.setattr(cli, "build_parser", building)
    assert cli.main(["list"]) == 0
    assert seen == [False]
    assert gc.isenabled()


def test_a_command_that_fails_still_turns_it_back_on(unfrozen, capsys):
    assert cli.main(["show", "nobody-by-this-name"]) != 0
    assert gc.isenabled()


def test_ready_freezes_what_start_up_made_and_turns_it_on(unfrozen):
    startup.pause()
    startup.ready()
    assert gc.isenabled() and gc.get_freeze_count() > 0
    frozen = gc.get_freeze_count()
    startup.ready()  # already on: nothing more is frozen (a frozen object may die meanwhile)
    assert gc.get_freeze_count() <= frozen


def test_reply_turns_the_collector_on_once_its_model_is_loaded(
    unfrozen, tiny_model_dir, monkeypatch, capsys
):
    from persona.engine.chat import ChatEngine

    states = []
    original = ChatEngine.stream

    def stream(self, *args, **kwargs):
        states.append((gc.isenabled(), gc.get_freeze_count() > 0))
        yield from original(self, *args, **kwargs)

    monkeypatch.setattr(ChatEngine, "stream", stream)
    code = cli.main(
        [
            "reply",
            "--local",
            "--model",
            str(tiny_model_dir),
            "--no-persona",
            "--max-tokens",
            "4",
            "hi",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert states == [(True, True)]  # replying with the collector on, start-up's objects frozen
