"""A persona's own defaults: validation, precedence, storage and the schema revision that adds them."""

from __future__ import annotations

import sqlite3

import pytest

from persona.engine.config import (
    GenerationConfig,
    PersonaDefaults,
    generation_config,
    stop_strings,
)
from persona.errors import ConfigError, LibraryError
from persona.library import migrate, open_library
from persona.library.open import open_for_reading
from tests.library_helpers import make_prompt

FALSTAFF = PersonaDefaults(
    temperature=0.9, top_p=0.95, max_new_tokens=120, stop=("Exit.",), greeting="Welcome, Hal!"
)


def test_the_request_beats_the_persona_which_beats_the_built_in_values():
    built_in = GenerationConfig()
    config = generation_config(FALSTAFF, temperature=0.2, top_k=None)
    assert config.temperature == 0.2  # given
    assert (config.top_p, config.max_new_tokens) == (0.95, 120)  # the persona's
    assert (config.top_k, config.repetition_penalty) == (
        built_in.top_k,
        built_in.repetition_penalty,
    )
    assert generation_config(None, seed=3) == GenerationConfig(seed=3)
    assert generation_config(PersonaDefaults()) == built_in


def test_stop_strings_merge_the_given_first_each_once():
    assert stop_strings(FALSTAFF, ["Enter.", "Exit."]) == ["Enter.", "Exit."]
    assert stop_strings(FALSTAFF) == ["Exit."]
    assert stop_strings(None, ["x"]) == ["x"]


@pytest.mark.parametrize(
    "record, fragment",
    [
        ({"temperature": -1}, "temperature=-1.0 must be 0 (greedy) or more"),
        ({"top_p": 0}, "top_p=0.0 must be in (0, 1]"),
        ({"top_k": 2.5}, "top_k=2.5 is not a whole number"),
        ({"max_new_tokens": 0}, "max_new_tokens=0 must be at least 1"),
        ({"repetition_penalty": "high"}, "repetition_penalty='high' is not a number"),
        ({"temperature": float("nan")}, "temperature=nan"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "takes up to 4 non-empty strings"),
        ({"stop": [""]}, "takes up to 4 non-empty strings"),
        ({"greeting": "   "}, "greeting='   ' must be non-empty text"),
        ({"colour": "red"}, "unknown persona setting 'colour'"),
    ],
)
def test_bad_defaults_are_refused_naming_the_key_and_the_rule(record, fragment):
    with pytest.raises(ConfigError) as caught:
        PersonaDefaults.from_dict(record)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_defaults_round_trip_through_their_record_and_unset_with_none():
    assert PersonaDefaults.from_dict(FALSTAFF.to_dict()) == FALSTAFF
    assert PersonaDefaults().to_dict() == {}
    changed = FALSTAFF.updated({"temperature": None, "stop": None, "top_k": 40})
    assert changed.to_dict() == {
        "top_p": 0.95,
        "top_k": 40,
        "max_new_tokens": 120,
        "greeting": "Welcome, Hal!",
    }


def test_the_library_stores_them_and_both_readers_return_them(tmp_path):
    path = tmp_path / "library.db"
    lib = open_library(path)
    lib.add_version("falstaff", make_prompt())
    lib.add_version("hal", make_prompt(seed=2))
    assert lib.get_defaults("falstaff") == PersonaDefaults()
    assert lib.set_defaults("Falstaff", FALSTAFF.to_dict()) == FALSTAFF
    with pytest.raises(ConfigError, match="top_p=2.0"):
        lib.set_defaults("falstaff", {"top_p": 2.0, "temperature": 0.1})
    lib.add_version("falstaff", make_prompt(seed=3))  # a new version keeps them
    lib.close()
    reader = open_for_reading(path)
    try:
        assert reader.get_defaults("falstaff") == FALSTAFF  # nothing of the refused change
        listed = {p.name: p.defaults for p in reader.list_personas()}
        assert listed == {"falstaff": FALSTAFF.to_dict(), "hal": {}}
        assert reader.get_persona("falstaff").defaults == FALSTAFF.to_dict()
    finally:
        reader.close()


def test_a_damaged_record_says_how_to_reset_it(tmp_path):
    path = tmp_path / "library.db"
    lib = open_library(path)
    lib.add_version("falstaff", make_prompt())
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE personas SET defaults_json = '{\"top_p\": 7}'")
    connection.close()
    with pytest.raises(LibraryError, match="persona set falstaff --reset"):
        lib.get_defaults("falstaff")
    with pytest.raises(LibraryError):
        lib.set_defaults("falstaff", {"temperature": 0.5})
    assert lib.set_defaults("falstaff", {"temperature": 0.5}, reset=True).to_dict() == {
        "temperature": 0.5
    }
    lib.close()


def test_migration_down_and_up_keeps_everything_else_and_starts_with_no_defaults(tmp_path):
    path = tmp_path / "library.db"
    lib = open_library(path)
    lib.add_version("falstaff", make_prompt(seed=4), description="fat knight", tags=["comic"])
    lib.set_defaults("falstaff", FALSTAFF.to_dict())
    lib.close()
    migrate.downgrade(path, 1.0, "0003_tensors_apart")
    with sqlite3.connect(path) as connection:
        names = [row[1] for row in connection.execute("PRAGMA table_info(personas)")]
        assert "defaults_json" not in names
        assert connection.execute("SELECT name, description FROM personas").fetchall() == [
            ("falstaff", "fat knight")
        ]
    connection.close()
    lib = open_library(path)  # back to head
    assert migrate.current_revision(path, 1.0) == migrate.HEAD_REVISION
    info = lib.get_persona("falstaff")
    assert (info.description, info.tags, info.defaults) == ("fat knight", ["comic"], {})
    assert lib.get_prompt("falstaff").sha256 == make_prompt(seed=4).sha256
    assert lib.set_defaults("falstaff", {"greeting": "Hal!"}).greeting == "Hal!"
    lib.delete("falstaff")  # foreign keys hold after the rebuild
    lib.close()


def test_a_request_s_stop_strings_come_first_and_the_persona_s_still_apply():
    from persona.serve.schemas import ChatRequest, Limits
    from persona.serve.schemas import generation_config as request_config
    from persona.serve.schemas import stop_strings as request_stops

    hello = [{"role": "user", "content": "hi"}]
    body = ChatRequest(model="falstaff", messages=hello, stop="\nUser:", temperature=0.1)
    assert request_stops(body, FALSTAFF) == ["\nUser:", "Exit."]
    assert request_stops(ChatRequest(model="falstaff", messages=hello), FALSTAFF) == ["Exit."]
    config = request_config(body, Limits(max_tokens=100), FALSTAFF)
    assert (config.temperature, config.top_p, config.max_new_tokens) == (0.1, 0.95, 100)


@pytest.mark.parametrize("key", ["temperature", "max_new_tokens"])
def test_a_number_too_large_for_a_float_is_refused_in_one_short_line(key) -> None:
    with pytest.raises(ConfigError) as refused:
        PersonaDefaults(**{key: 10**400})
    message = str(refused.value)
    assert message.startswith(f"{key}=1000") and len(message) < 120
