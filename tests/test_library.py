"""The persona library API: versions, rollback, renames and deletes that keep history, settings."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from persona.errors import AlreadyExistsError, LibraryError, NotFoundError
from persona.library import open_library
from persona.library.open import open_for_reading
from persona.library.reader import LibraryReader
from persona.paths import library_path
from tests.library_helpers import FINGERPRINT, METRICS, TRAINING, make_prompt


@pytest.fixture
def lib(tmp_path):
    library = open_library(tmp_path / "library.db")
    yield library
    library.close()


def test_default_path_is_in_the_data_dir_and_owner_only(isolated_home):
    lib = open_library()
    lib.add_version("hamlet", make_prompt())
    lib.close()
    assert library_path().parent == isolated_home
    for file in isolated_home.iterdir():  # the db and its WAL / shared-memory files
        if file.name.startswith("library.db"):
            assert stat.S_IMODE(os.stat(file).st_mode) == 0o600, file


def test_prompt_round_trips_exactly_with_its_record(lib):
    prompt = make_prompt(seed=3)
    info = lib.add_version(
        "Hamlet",
        prompt,
        description="the prince",
        model_id="tiny",
        training=TRAINING,
        metrics=METRICS,
        tags=["tragic", "dane"],
    )
    assert (info.version, info.active, info.num_virtual_tokens, info.hidden_size) == (
        1,
        True,
        5,
        32,
    )
    loaded = lib.get_prompt("Hamlet")
    assert torch.equal(loaded.embeddings, prompt.embeddings)
    assert (
        loaded.fingerprint == FINGERPRINT
        and loaded.name == "Hamlet"
        and loaded.description == "the prince"
    )
    shown = lib.get_persona("Hamlet")
    assert (
        shown.tags == ["dane", "tragic"] and shown.metrics == METRICS and shown.model_id == "tiny"
    )
    assert shown.versions[0].training == TRAINING and shown.versions[0].fingerprint == str(
        FINGERPRINT
    )
    assert shown.versions[0].fingerprint_json == FINGERPRINT.to_json()


def test_retraining_adds_a_version_and_rollback_moves_between_them(lib):
    prompts = [make_prompt(seed=s) for s in range(3)]
    for prompt in prompts:
        lib.add_version("hamlet", prompt)
    assert lib.get_persona("hamlet").active_version == 3
    assert torch.equal(lib.get_prompt("hamlet").embeddings, prompts[2].embeddings)
    assert lib.rollback("hamlet").version == 2
    assert torch.equal(lib.get_prompt("hamlet").embeddings, prompts[1].embeddings)
    assert lib.rollback("hamlet", 1).version == 1
    with pytest.raises(LibraryError, match="oldest version"):
        lib.rollback("hamlet")
    lib.rollback("hamlet", 3)
    assert torch.equal(lib.get_prompt("hamlet", version=1).embeddings, prompts[0].embeddings)
    with pytest.raises(NotFoundError, match=r"no version 7 \(it has 1, 2, 3\)"):
        lib.rollback("hamlet", 7)
    assert [v.active for v in lib.get_persona("hamlet").versions] == [False, False, True]


def test_names_are_case_insensitive_and_unknown_names_get_suggestions(lib):
    lib.add_version("Hamlet", make_prompt())
    lib.add_version("hamlet", make_prompt(seed=1))  # the same persona, a second version
    assert [p.name for p in lib.list_personas()] == ["Hamlet"]
    assert lib.get_persona("HAMLET").active_version == 2
    with pytest.raises(NotFoundError, match="did you mean 'Hamlet'"):
        lib.get_prompt("hamlte")
    with pytest.raises(LibraryError, match="not usable"):
        lib.add_version(" padded ", make_prompt())


def test_list_reports_active_version_metadata_sorted(lib):
    lib.add_version("ophelia", make_prompt(tokens=8), metrics=METRICS, tags=["sad"])
    lib.add_version("Claudius", make_prompt(), model_id="big")
    listed = lib.list_personas()
    assert [p.name for p in listed] == ["Claudius", "ophelia"]
    assert (listed[1].num_virtual_tokens, listed[1].metrics, listed[1].tags) == (
        8,
        METRICS,
        ["sad"],
    )
    assert listed[0].model_id == "big" and listed[0].versions == []


def test_rename_and_delete_never_lose_who_said_what(lib):
    lib.add_version("hamlet", make_prompt())
    lib.add_version("ophelia", make_prompt(seed=1))
    lib.set_setting("default_persona", "hamlet")
    chat = lib.create_conversation("act one", str(FINGERPRINT))
    lib.add_message(chat, "user", "who's there?", None)
    lib.add_message(chat, "assistant", "nay, answer me", "hamlet", token_count=5)
    lib.add_message(chat, "assistant", "my lord", "ophelia", cut_short=True)
    lib.rename("hamlet", "prince")
    assert lib.get_setting("default_persona") == "prince"
    lib.add_message(chat, "assistant", "words, words", "prince")
    lib.delete("ophelia")
    messages = lib.get_messages(chat)
    assert [(m.role, m.persona, m.content) for m in messages] == [
        ("user", None, "who's there?"),
        ("assistant", "hamlet", "nay, answer me"),
        ("assistant", "ophelia", "my lord"),
        ("assistant", "prince", "words, words"),
    ]
    assert messages[1].token_count == 5 and messages[2].cut_short and not messages[1].cut_short
    assert lib.list_conversations()[0].personas == ["hamlet", "ophelia", "prince"]
    assert not lib.has_persona("ophelia") and lib.has_persona("PRINCE")
    lib.delete("prince")
    assert lib.get_setting("default_persona") is None
    with pytest.raises(NotFoundError):
        lib.get_prompt("prince")


def test_rename_to_a_taken_name_is_refused(lib):
    lib.add_version("hamlet", make_prompt())
    lib.add_version("ophelia", make_prompt())
    with pytest.raises(AlreadyExistsError, match="'ophelia' already exists"):
        lib.rename("hamlet", "Ophelia")
    lib.rename("hamlet", "Hamlet")  # only the case changes: allowed
    assert [p.name for p in lib.list_personas()] == ["Hamlet", "ophelia"]


def test_conversations_titles_messages_and_settings(lib):
    first = lib.create_conversation("first", "fp")
    second = lib.create_conversation("second", "fp")
    doomed = lib.add_message(first, "user", "hello", None)
    lib.add_message(first, "user", "again", None)
    lib.delete_message(doomed)
    lib.set_conversation_title(second, "renamed")
    listed = lib.list_conversations()
    assert [c.id for c in listed] == [first, second]  # most recently active first
    assert [(c.title, c.message_count) for c in listed] == [("first", 1), ("renamed", 0)]
    assert [m.content for m in lib.get_messages(first)] == ["again"]
    with pytest.raises(NotFoundError, match="no conversation with id 99"):
        lib.add_message(99, "user", "x", None)
    with pytest.raises(LibraryError, match="role 'robot'"):
        lib.add_message(first, "robot", "x", None)
    lib.set_setting("theme", "dark")
    assert lib.get_setting("theme") == "dark" and lib.get_setting("missing", "x") == "x"
    lib.delete_conversation(second)
    assert [c.id for c in lib.list_conversations()] == [first]


def test_the_sqlite_reader_sees_exactly_what_the_orm_library_sees(lib):
    lib.add_version("hamlet", make_prompt(), metrics=METRICS, tags=["a"], training=TRAINING)
    lib.add_version("hamlet", make_prompt(seed=2))
    lib.add_version("ophelia", make_prompt(seed=3))
    chat = lib.create_conversation("scene", "fp")
    lib.add_message(chat, "assistant", "to be", "hamlet", token_count=3, cut_short=True)
    reader = open_for_reading(lib.path)
    try:
        assert isinstance(reader, LibraryReader)
        assert reader.list_personas() == lib.list_personas()
        assert reader.get_persona("Hamlet") == lib.get_persona("hamlet")
        assert reader.list_conversations() == lib.list_conversations()
        assert reader.get_messages(chat) == lib.get_messages(chat)
        assert torch.equal(
            reader.get_prompt("hamlet", 1).embeddings, lib.get_prompt("hamlet", 1).embeddings
        )
        assert (
            reader.get_prompt("HAMLET").fingerprint
            == lib.get_prompt("hamlet").fingerprint
            == FINGERPRINT
        )
    finally:
        reader.close()


def test_a_tensor_damaged_on_disk_is_reported_not_returned(lib):
    lib.add_version("hamlet", make_prompt())
    lib.add_version("hamlet", make_prompt(seed=1))
    with lib.engine.begin() as connection:  # flip one byte of the stored float values
        version_id = connection.exec_driver_sql(
            "SELECT id FROM prompt_versions WHERE version = 2"
        ).scalar()
        blob = bytearray(
            connection.exec_driver_sql(
                "SELECT data FROM prompt_tensors WHERE version_id = ?", (version_id,)
            ).scalar()
        )
        blob[-1] ^= 0x01
        connection.exec_driver_sql(
            "UPDATE prompt_tensors SET data = ? WHERE version_id = ?", (bytes(blob), version_id)
        )
    with pytest.raises(
        LibraryError, match=r"version 2 of persona 'hamlet' is damaged \(checksum mismatch\)"
    ):
        lib.get_prompt("hamlet")
    lib.rollback("hamlet")
    assert torch.equal(lib.get_prompt("hamlet").embeddings, make_prompt().embeddings)
