"""`persona set` and `show` as a user runs them, and persona files carrying the defaults."""

from __future__ import annotations

import json

import pytest

from persona.library import open_library
from tests.helpers import assert_one_line_error, run
from tests.library_helpers import make_prompt


def set_(capsys, library, *words: str) -> tuple[int, str, str]:
    return run(capsys, "set", "hamlet", *words, "--library", str(library))


def test_set_then_show_plain_and_json(capsys, library):
    code, out, _ = set_(
        capsys, library, "temperature=0.9", "top_p=0.95", "stop=Exit.", "greeting=Welcome, Hal!"
    )
    assert code == 0 and "hamlet greeting: Welcome, Hal!" in out
    code, out, _ = set_(capsys, library, "max_tokens=120", 'stop=["Exit.", "Exeunt."]', "stop=Hal")
    assert code == 0
    code, out, _ = run(capsys, "show", "hamlet", "--library", str(library))
    assert "  defaults:    temperature 0.9, top_p 0.95, max_new_tokens 120" in out
    assert '  stop:        "Exit.", "Exeunt.", "Hal"' in out
    assert "  greeting:    Welcome, Hal!" in out
    code, out, _ = run(capsys, "show", "hamlet", "--json", "--library", str(library))
    assert json.loads(out)["defaults"] == {
        "temperature": 0.9,
        "top_p": 0.95,
        "max_new_tokens": 120,
        "stop": ["Exit.", "Exeunt.", "Hal"],
        "greeting": "Welcome, Hal!",
    }
    code, out, _ = run(capsys, "list", "--json", "--library", str(library))
    assert json.loads(out)[0]["defaults"]["greeting"] == "Welcome, Hal!"


def test_an_empty_value_unsets_and_reset_clears_all(capsys, library):
    set_(capsys, library, "temperature=0.9", "stop=Exit.", "greeting=Hail")
    code, out, _ = set_(capsys, library, "temperature=", "stop=")
    assert code == 0 and "temperature" not in out and "stop" not in out and "Hail" in out
    code, out, _ = set_(capsys, library, "--reset")
    assert code == 0 and "no defaults of its own" in out
    code, out, _ = run(capsys, "show", "hamlet", "--library", str(library))
    assert "defaults:" not in out and "greeting:" not in out


@pytest.mark.parametrize(
    "word, fragments",
    [
        ("temperature=hot", ("temperature='hot' is not a number", "0 (greedy) or more")),
        ("top_p=1.5", ("top_p=1.5 must be in (0, 1]",)),
        ("top_k=-1", ("top_k=-1 must be 0 (off) or more",)),
        ("max_tokens=0", ("max_new_tokens=0 must be at least 1",)),
        ("colour=red", ("unknown setting 'colour'", "temperature, top_p")),
        ("temperature", ("'temperature' is not KEY=VALUE",)),
        ("stop=[1, 2]", ("is not a JSON list of strings",)),
    ],
)
def test_bad_settings_are_one_line_and_change_nothing(capsys, library, word, fragments):
    set_(capsys, library, "top_p=0.5")
    code, _, err = set_(capsys, library, "temperature=0.3", word)
    assert_one_line_error(code, err, *fragments)
    lib = open_library(library)
    assert lib.get_defaults("hamlet").to_dict() == {"top_p": 0.5}
    lib.close()


def test_set_needs_something_and_an_existing_persona(capsys, library):
    code, _, err = set_(capsys, library)
    assert_one_line_error(code, err, "nothing to set")
    code, _, err = run(capsys, "set", "hamlt", "top_p=0.5", "--library", str(library))
    assert_one_line_error(code, err, "no persona named 'hamlt'; did you mean 'hamlet'?")


def test_our_file_carries_the_defaults_and_peft_does_not(capsys, library, tmp_path):
    set_(capsys, library, "temperature=0.9", "stop=Exit.", "greeting=Welcome, Hal!")
    for fmt, target in (("persona", "f.safetensors"), ("peft", "f-adapter")):
        path = tmp_path / target
        assert (
            run(capsys, "export", "hamlet", str(path), "--format", fmt, "--library", str(library))[
                0
            ]
            == 0
        )
        code, _, _ = run(capsys, "import", str(path), "--name", fmt, "--library", str(library))
        assert code == 0
    lib = open_library(library)
    assert lib.get_defaults("persona") == lib.get_defaults("hamlet")
    assert lib.get_defaults("peft").to_dict() == {}
    assert "persona_defaults" not in lib.get_prompt("persona").extra  # kept apart from the tensor
    lib.close()


def test_a_file_whose_defaults_do_not_validate_is_imported_without_them(capsys, library, tmp_path):
    prompt = make_prompt(seed=7, name="pistol")
    prompt.extra["persona_defaults"] = json.dumps({"top_p": 3, "min_p": 0.1})
    path = tmp_path / "pistol.safetensors"
    prompt.save(path)
    code, _, err = run(capsys, "import", str(path), "--library", str(library))
    assert code == 0 and "warning" in err and "imported without them" in err
    assert "unknown persona setting 'min_p'" in err  # the message says what was wrong
    lib = open_library(library)
    assert lib.get_defaults("pistol").to_dict() == {}
    lib.close()


def test_defaults_that_are_not_json_are_left_out_naming_the_fault(capsys, library, tmp_path):
    prompt = make_prompt(seed=7, name="nym")
    prompt.extra["persona_defaults"] = '{"temperature": 0.9'  # cut short
    path = tmp_path / "nym.safetensors"
    prompt.save(path)
    code, _, err = run(capsys, "import", str(path), "--library", str(library))
    assert code == 0 and "imported without them" in err
    assert "not usable (Expecting ',' delimiter: line 1 column 20 (char 19))" in err
    lib = open_library(library)
    assert lib.get_defaults("nym").to_dict() == {}
    lib.close()
