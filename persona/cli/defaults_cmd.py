"""`persona set NAME key=value ...`: a persona's own defaults (sampling, stop strings, greeting).

    persona set falstaff temperature=0.9 top_p=0.95 stop='Exit.' greeting='Welcome, Hal!'
    persona set falstaff temperature=        # unset: the built-in value applies again

The values are checked by persona.engine.config.PersonaDefaults, the rules GenerationConfig uses.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from persona.engine.config import DEFAULT_TYPES, RULES
from persona.errors import ConfigError

# the keys `persona set` takes -> PersonaDefaults fields (max_tokens: the API's name for one)
KEYS: dict[str, str] = {
    **{field: field for field in DEFAULT_TYPES},
    "max_tokens": "max_new_tokens",
    "stop": "stop",
    "greeting": "greeting",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    help_text = "set a persona's own defaults: sampling values, stop strings, greeting"
    parser = subparsers.add_parser(
        "set",
        help=help_text,
        description=(
            "Set a persona's own defaults, used when a chat, `persona reply` or the server does not "
            "name them: "
            + ", ".join(key for key in KEYS if key != "max_new_tokens")
            + ". KEY= unsets one; stop may be given several times or as a JSON list."
        ),
    )
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("settings", metavar="KEY=VALUE", nargs="*")
    parser.add_argument(
        "--reset", action="store_true", help="clear every default first (also a damaged record)"
    )
    parser.add_argument(
        "--library",
        metavar="PATH",
        type=Path,
        help="the persona library file (default: in the data dir)",
    )
    parser.set_defaults(func=run_set)


def parse_settings(words: list[str]) -> dict[str, Any]:
    """`key=value` words -> PersonaDefaults changes (None: unset); ConfigError names a bad one."""
    changes: dict[str, Any] = {}
    stops: list[str] | None = None
    for word in words:
        key, sep, text = word.partition("=")
        key = key.strip().lower().replace("-", "_")
        if not sep:
            raise ConfigError(f"{word!r} is not KEY=VALUE; e.g. `persona set NAME temperature=0.8`")
        field = KEYS.get(key)
        if field is None:
            known = ", ".join(k for k in KEYS if k != "max_new_tokens")
            raise ConfigError(f"unknown setting {key!r}; use one of {known}")
        if field == "stop":
            stops = _stops(text, stops)
        elif text == "":
            changes[field] = None
        elif field in DEFAULT_TYPES:
            changes[field] = _number(key, field, text)
        else:
            changes[field] = text
    if stops is not None:
        changes["stop"] = stops or None
    return changes


def _number(key: str, field: str, text: str) -> int | float:
    kind = DEFAULT_TYPES[field]
    try:
        return kind(text.strip())
    except ValueError:
        wanted = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{key}={text!r} is not {wanted}; it {RULES[field]}") from None


def _stops(text: str, stops: list[str] | None) -> list[str]:
    """`stop=` clears; `stop=["a", "b"]` is a JSON list; any other text is one stop string."""
    if text == "":
        return []
    if text.lstrip().startswith("["):
        try:
            given = json.loads(text)
        except ValueError:
            given = None
        if not isinstance(given, list) or not all(isinstance(s, str) for s in given):
            raise ConfigError(f"stop={text!r} is not a JSON list of strings, e.g. '[\"Exit.\"]'")
        return [*(stops or []), *given]
    return [*(stops or []), text]


def describe(defaults: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) lines for a persona's defaults record, for `show` and `set`."""
    lines: list[tuple[str, str]] = []
    sampling = [f"{key} {defaults[key]:g}" for key in DEFAULT_TYPES if key in defaults]
    if sampling:
        lines.append(("defaults", ", ".join(sampling)))
    if defaults.get("stop"):
        lines.append(
            ("stop", ", ".join(json.dumps(s, ensure_ascii=False) for s in defaults["stop"]))
        )
    if defaults.get("greeting"):
        lines.append(("greeting", " ".join(str(defaults["greeting"]).split())))
    return lines


def run_set(args: argparse.Namespace) -> int:
    from persona.library import open_library

    if not args.settings and not args.reset:
        raise ConfigError(
            "nothing to set; give KEY=VALUE, e.g. `persona set NAME temperature=0.8`, or --reset"
        )
    changes = parse_settings(args.settings)  # refused before the library is opened
    lib = open_library(args.library)
    try:
        defaults = lib.set_defaults(args.name, changes, reset=args.reset)
        name = lib.get_persona(args.name).name
    finally:
        lib.close()
    lines = describe(defaults.to_dict())
    if not lines:
        print(f"{name} has no defaults of its own; the built-in ones apply")
    for label, text in lines:
        print(f"{name} {label}: {text}")
    return 0
