"""Usage errors are one line on stderr with exit code 2, and never replay control characters
(escape sequences, bells) from the arguments a user gave: they are shown escaped."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from persona.cli.main import main

CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")  # any C0/C1 control but the newline

BAD_ARGUMENTS = [
    pytest.param(["\x1b[31mX"], "\\x1b[31mX", id="unknown-command"),
    pytest.param(["list", "\x1b]0;title\x07"], "\\x1b]0;title\\x07", id="unrecognized-argument"),
    pytest.param(["list", "--\x1bx"], "--\\x1bx", id="unknown-option"),
    pytest.param(["show", "a", "b\x9b2J"], "b\\x9b2J", id="extra-argument-c1"),
    pytest.param(["list", "--json", "\x00\x08\x7f"], "\\x00\\x08\\x7f", id="nul-backspace-delete"),
    pytest.param(["reply", "--t=\x1b[2J"], "--t=\\x1b[2J", id="ambiguous-option-of-a-command"),
]


@pytest.mark.parametrize(("argv", "escaped"), BAD_ARGUMENTS)
def test_usage_errors_show_control_characters_escaped(capsys, argv, escaped):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert not CONTROL.search(err)
    error_lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(error_lines) == 1 and escaped in error_lines[0]


def test_the_installed_entry_point_escapes_them_too():
    argv = ["list", "\x1b[2J\x07"]
    result = subprocess.run(
        [sys.executable, "-m", "persona", *argv], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert not CONTROL.search(result.stderr)
    assert result.stderr.splitlines()[-1] == (
        "persona: error: unrecognized arguments: \\x1b[2J\\x07"
    )
