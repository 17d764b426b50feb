"""README's and docs' commands name what the `persona` command really takes, and the defaults they
state are the ones it uses: a renamed flag or a changed default fails here, not in a reader's
terminal.

A command is any `persona SUBCOMMAND ...` (or `.venv/bin/persona`, `-m persona`) in a fenced code
block of README.md or docs/*.md, or an inline `persona subcommand ...` in their prose; its subcommand and every `--flag` must exist in the parser that
`persona.cli.main.build_parser` builds. A usage synopsis that shows a value, `[--lr 0.02]`, states
that value as the default.
"""

from __future__ import annotations

import argparse
import re
import shlex
from functools import cache
from pathlib import Path

import pytest

from persona.cli.main import build_parser
from persona.engine.config import GenerationConfig
from persona.train.config import DEFAULT_STEPS, TrainConfig

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
NOT_SHELL = {"python", "json", "toml"}  # blocks whose `persona` words are not commands
INLINE = re.compile(r"`((?:\.venv/bin/)?persona [a-z-][^`]*)`")  # `persona show NAME` in prose
SEPARATORS = {"&&", "||", ";", "&", "|", "(", ")"}
SYNOPSIS_DEFAULT = re.compile(r"\[(--[a-z][a-z-]*) (-?[0-9][0-9.]*)\]")  # [--lr 0.02]
HELP_DEFAULT = re.compile(r"\(default:? (-?[0-9][0-9.]*)[;)]")  # "(default 20)", "(default 0.02;"


# ---- the parser ---------------------------------------------------------------------------------


@cache
def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (choices,) = (a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"": parser, **choices}  # "": the top level (`persona --version`)


def option(command: str, flag: str) -> argparse.Action:
    return subcommands()[command]._option_string_actions[flag]


def effective_default(command: str, flag: str) -> object:
    """What a flag means when it is left out: the parser's default, or where the parser leaves it
    None for the config to decide (`persona train`), the config's."""
    action = option(command, flag)
    if action.default is not None or command != "train":
        return action.default
    if action.dest == "steps":
        return DEFAULT_STEPS
    return getattr(TrainConfig(), action.dest)


# ---- the docs -----------------------------------------------------------------------------------


def code_blocks(text: str) -> list[str]:
    return [body for lang, body in FENCE.findall(text) if lang.strip() not in NOT_SHELL]


def logical_lines(block: str) -> list[str]:
    """Lines as the shell reads them (a trailing backslash continues), and an indented line that
    starts with `[` or `--` continues a usage synopsis."""
    lines: list[str] = []
    for raw in block.splitlines():
        line = raw.strip().removeprefix("$ ")
        if lines and lines[-1].endswith("\\"):
            lines[-1] = lines[-1][:-1] + " " + line
        elif lines and raw[:1].isspace() and line.startswith(("[", "--")):
            lines[-1] += " " + line
        else:
            lines.append(line)
    return lines


def commands(line: str) -> list[list[str]]:
    """The words after each `persona` of a shell line, up to the end of its command. Brackets of
    a synopsis are dropped and `a|b` inside them is read as alternatives, not a pipe."""
    line = re.sub(r"\[[^\]]*\]", lambda bracket: bracket.group(0).replace("|", " "), line)
    line = line.replace("[", " ").replace("]", " ")
    lexer = shlex.shlex(line, posix=True, punctuation_chars="();&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes: prose, not a command
        return []
    found = []
    for at, token in enumerate(tokens):
        if is_persona(token) and starts_command(tokens[:at]):
            words: list[str] = []
            for word in tokens[at + 1 :]:
                if word in SEPARATORS:
                    break
                words.append(word)
            if words:
                found.append(words)
    return found


def is_persona(token: str) -> bool:
    return token == "persona" or token.endswith("/persona")


def starts_command(before: list[str]) -> bool:
    """Whether a word after `before` is a command: first on the line or after a separator (past
    `VAR=value` assignments), or after `python -m`; prose that says "persona" in a diagram is not."""
    words = list(before)
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", words[-1]):
        words.pop()
    return not words or words[-1] in SEPARATORS or words[-1] == "-m"


def problems(text: str) -> list[str]:
    """Every command of `text` that names a subcommand or flag the parser lacks, or shows a
    default the parser does not have."""
    found = []
    for block in code_blocks(text):
        for line in logical_lines(block):
            for words in commands(line):
                found += command_problems(words)
            found += synopsis_problems(line)
    for span in INLINE.findall(FENCE.sub("", text)):
        for words in commands(span):
            found += command_problems(words)
    return found


def command_problems(words: list[str]) -> list[str]:
    command = "" if words[0].startswith("-") else words[0]
    shown = "persona " + " ".join(words)
    if command not in subcommands():
        return [f"`{shown}`: no subcommand {command!r}"]
    known = subcommands()[command]._option_string_actions
    flags = [
        word.split("=", 1)[0] for word in words if re.fullmatch(r"--[a-z][a-z0-9-]*(=.*)?", word)
    ]
    return [f"`{shown}`: `persona {command}` has no {flag}" for flag in flags if flag not in known]


def synopsis_problems(line: str) -> list[str]:
    """`persona train ... [--lr 0.02]`: the value shown is the default."""
    found = []
    for words in commands(line):
        command = words[0]
        if command not in subcommands():
            continue
        for flag, shown in SYNOPSIS_DEFAULT.findall(line):
            if flag in subcommands()[command]._option_string_actions:
                default = effective_default(command, flag)
                if not same_number(shown, default):
                    found.append(
                        f"`persona {command}`: the docs show [{flag} {shown}], the default is {default!r}"
                    )
    return found


def same_number(shown: str, value: object) -> bool:
    if isinstance(value, str):
        return shown == value
    return isinstance(value, (int, float)) and not isinstance(value, bool) and float(shown) == value


# ---- the tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_persona_command_in_the_docs_exists_with_its_flags(doc: Path) -> None:
    assert problems(doc.read_text(encoding="utf-8")) == []


def test_the_docs_have_commands_to_check() -> None:
    """The check reads something: README's usage block alone has a dozen commands."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = [
        words[0]
        for block in code_blocks(readme)
        for line in logical_lines(block)
        for words in commands(line)
    ]
    assert {"chat", "reply", "serve", "train", "eval", "export", "import", "blend"} <= set(found)


def test_a_doc_that_names_a_missing_flag_or_subcommand_or_another_default_fails() -> None:
    doc = """Train one:

```sh
persona train log.txt --speaker ALICE --name alice --virtual-token 20   # singular: no such flag
persona frobnicate alice
persona train LOG --speaker NAME [--lr 0.5] [--batch-size 8]
.venv/bin/persona serve --port 8400 && persona list --json
```

Then `persona show alice --versions` lists them.
"""
    found = problems(doc)
    assert any("has no --virtual-token" in problem for problem in found)
    assert any("no subcommand 'frobnicate'" in problem for problem in found)
    assert any("[--lr 0.5], the default is 0.02" in problem for problem in found)
    assert any("`persona show` has no --versions" in problem for problem in found)
    assert len(found) == 4  # --batch-size 8, serve --port, list --json are right


def test_every_numeric_default_a_help_text_states_is_the_default() -> None:
    wrong = []
    for command, parser in subcommands().items():
        for action in parser._actions:
            for stated in HELP_DEFAULT.findall(action.help or ""):
                default = effective_default(command, action.option_strings[0])
                if not same_number(stated, default):
                    wrong.append(
                        f"persona {command} {action.option_strings[0]}: help says {stated}, default {default!r}"
                    )
    assert wrong == []


def flag_table(doc: str, heading: str) -> list[tuple[str, str]]:
    """(flag, default) rows of the table under `heading`: `| `--port` | `8400` | ... |`."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    section = text.split(heading, 1)[1].split("\n#", 1)[0]
    return re.findall(r"^\| `(--[a-z-]+)[^`]*` \| ([^|]+) \|", section, re.MULTILINE)


def test_the_serve_flag_table_states_the_parsers_defaults() -> None:
    rows = flag_table("docs/serving.md", "## Flags, limits and security")
    assert len(rows) >= 8
    checked = 0
    for flag, stated in rows:
        default = effective_default("serve", flag)
        if default is None:  # decided later (an environment variable, the scheduler's own default)
            continue
        stated = stated.strip().strip("`")
        if stated == "off":
            assert default is False, flag
        elif stated.endswith(" MiB"):
            assert default == int(stated.split()[0]) * 1024 * 1024, flag
        else:
            assert stated == str(default), f"{flag}: docs say {stated}, the default is {default!r}"
        checked += 1
    assert checked >= 6


def test_the_default_port_and_address_the_readme_gives_are_the_servers() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    address = f"{effective_default('serve', '--host')}:{effective_default('serve', '--port')}"
    assert f"http://{address}/v1" in readme and f"on {address}" in readme
    serving = (ROOT / "docs/serving.md").read_text(encoding="utf-8")
    assert f"http://{address}/v1" in serving


def test_the_sampling_defaults_the_docs_state_are_the_built_in_ones() -> None:
    built_in = GenerationConfig()
    serving = (ROOT / "docs/serving.md").read_text(encoding="utf-8")
    assert (
        f"| `temperature` | 0 to 2; 0 is greedy. Built-in default {built_in.temperature:g} |"
        in serving
    )
    assert f"Built-in default {built_in.top_p:g} |" in serving
    assert f"Defaults {built_in.top_k} and {built_in.repetition_penalty:g} |" in serving
    style = (ROOT / "docs/style.md").read_text(encoding="utf-8")
    stated = (
        f"(temperature {built_in.temperature:g}, top-p {built_in.top_p:g}, "
        f"top-k {built_in.top_k}, repetition penalty {built_in.repetition_penalty:g})"
    )
    assert stated in " ".join(style.split())


def make_targets() -> set[str]:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z][A-Za-z0-9_-]*):", makefile, re.MULTILINE))


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_make_target_the_docs_name_exists(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    named = set(re.findall(r"`make ([a-z][a-z0-9_-]*)", text))
    for block in code_blocks(text):
        named |= set(re.findall(r"^\s*make ([a-z][a-z0-9_-]*)", block, re.MULTILINE))
    assert named <= make_targets(), f"{doc.name} names make {sorted(named - make_targets())}"


def test_the_readme_names_the_make_targets_a_fresh_machine_needs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert (
        {"chat", "test"}
        <= set(re.findall(r"^make ([a-z]+)", readme, re.MULTILINE))
        <= make_targets()
    )
