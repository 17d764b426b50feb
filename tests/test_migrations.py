"""Alembic migrations: empty to head, down and up again, and an old library keeps everything."""

from __future__ import annotations

import sqlite3

import torch
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from persona.library import migrate, open_library
from persona.library.models import Base
from persona.prompt.softprompt import SoftPrompt
from tests.library_helpers import FINGERPRINT, METRICS, make_prompt

FIRST = migrate.KNOWN_REVISIONS[0]


def tables(path) -> set[str]:
    with sqlite3.connect(path) as connection:
        names = {
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
    connection.close()
    return names - {"sqlite_sequence"}


def columns(path, table: str) -> list[str]:
    with sqlite3.connect(path) as connection:
        names = [row[1] for row in connection.execute(f"PRAGMA table_info({table})")]
    connection.close()
    return names


def test_known_revisions_are_exactly_the_scripts_in_order():
    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    oldest_first = [s.revision for s in reversed(list(scripts.walk_revisions()))]
    assert tuple(oldest_first) == migrate.KNOWN_REVISIONS
    assert scripts.get_current_head() == migrate.HEAD_REVISION


def test_empty_file_migrates_to_head_and_matches_the_orm_models(tmp_path):
    path = tmp_path / "library.db"
    open_library(path).close()
    assert migrate.current_revision(path, 1.0) == migrate.HEAD_REVISION
    assert {
        "personas",
        "prompt_versions",
        "prompt_tensors",
        "persona_tags",
        "conversations",
        "messages",
        "settings",
    } <= tables(path)
    assert "tensor" not in columns(path, "prompt_versions")
    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert differences == []


def test_head_down_to_base_and_up_again(tmp_path):
    path = tmp_path / "library.db"
    lib = open_library(path)
    lib.add_version("hamlet", make_prompt(seed=5))
    lib.close()
    migrate.downgrade(path, 1.0, FIRST)  # the tensor goes back into its version row
    assert "persona_tags" not in tables(path) and "cut_short" not in columns(path, "messages")
    assert "prompt_tensors" not in tables(path)
    with sqlite3.connect(path) as connection:
        stored = connection.execute("SELECT tensor FROM prompt_versions").fetchone()[0]
    connection.close()
    assert torch.equal(SoftPrompt.from_bytes(stored).embeddings, make_prompt(seed=5).embeddings)
    migrate.upgrade(path, 1.0)
    lib = open_library(path)
    assert torch.equal(lib.get_prompt("hamlet").embeddings, make_prompt(seed=5).embeddings)
    lib.delete("hamlet")
    lib.close()
    migrate.downgrade(path, 1.0, "base")
    assert tables(path) == {"alembic_version"}
    migrate.upgrade(path, 1.0)
    assert "persona_tags" in tables(path) and "cut_short" in columns(path, "messages")
    lib = open_library(path)
    lib.add_version("hamlet", make_prompt(), tags=["x"])
    assert lib.get_persona("hamlet").tags == ["x"]
    lib.close()


def test_a_library_made_at_the_first_revision_migrates_with_nothing_lost(tmp_path):
    path = tmp_path / "library.db"
    migrate.upgrade(path, 1.0, FIRST)
    prompts = [make_prompt(seed=1), make_prompt(seed=2)]
    now = "2025-01-02 03:04:05.000000"
    with sqlite3.connect(path) as connection:  # what persona at revision 0001 wrote
        connection.execute(
            "INSERT INTO personas (id, name, description, active_version, created, updated) VALUES (1, 'hamlet', 'prince', 1, ?, ?)",
            (now, now),
        )
        for version, prompt in enumerate(prompts, start=1):
            connection.execute(
                "INSERT INTO prompt_versions (persona_id, version, tensor, num_virtual_tokens, hidden_size, dtype, sha256,"
                " model_id, fingerprint, fingerprint_json, init, training_json, metrics_json, created)"
                " VALUES (1, ?, ?, 5, 32, 'float32', ?, 'tiny', ?, ?, 'random', NULL, ?, ?)",
                (
                    version,
                    prompt.to_bytes(),
                    prompt.sha256,
                    str(FINGERPRINT),
                    FINGERPRINT.to_json(),
                    '{"nll": {"soft_prompt": 2.25, "no_prompt": 3.5, "hard_prompt": 3.1}, "tokens": 1200, "examples": 40}',
                    now,
                ),
            )
        connection.execute(
            "INSERT INTO conversations (id, title, model_fingerprint, created, updated) VALUES (1, 'act one', 'fp', ?, ?)",
            (now, now),
        )
        connection.execute(
            "INSERT INTO messages (conversation_id, role, content, persona_name, persona_id, token_count, created)"
            " VALUES (1, 'user', 'who is there?', NULL, NULL, NULL, ?)",
            (now,),
        )
        connection.execute(
            "INSERT INTO messages (conversation_id, role, content, persona_name, persona_id, token_count, created)"
            " VALUES (1, 'assistant', 'nay, answer me', 'hamlet', 1, 4, ?)",
            (now,),
        )
        connection.execute("INSERT INTO settings (key, value) VALUES ('default_persona', 'hamlet')")
    connection.close()

    lib = open_library(path)  # migrates 0001 -> head
    assert migrate.current_revision(path, 1.0) == migrate.HEAD_REVISION
    info = lib.get_persona("hamlet")
    assert (info.description, info.active_version, len(info.versions), info.tags) == (
        "prince",
        1,
        2,
        [],
    )
    assert info.versions[0].metrics == {  # read with today's names
        "nll": {"persona": 2.25, "no_prompt": 3.5, "written_prompt": 3.1},
        "tokens": 1200,
        "examples": 40,
    }
    assert METRICS == info.versions[1].metrics
    assert torch.equal(lib.get_prompt("hamlet").embeddings, prompts[0].embeddings)
    assert torch.equal(lib.get_prompt("hamlet", 2).embeddings, prompts[1].embeddings)
    messages = lib.get_messages(1)
    assert [(m.role, m.content, m.persona, m.token_count, m.cut_short) for m in messages] == [
        ("user", "who is there?", None, None, False),
        ("assistant", "nay, answer me", "hamlet", 4, False),
    ]
    assert lib.get_setting("default_persona") == "hamlet"
    lib.delete("hamlet")  # foreign keys still hold after the table rebuild: messages keep the name
    assert lib.get_messages(1)[1].persona == "hamlet"
    lib.close()
