"""Library commands: list, show, rename, delete, rollback, export, import, history.

Nothing heavy is imported at module level: `list`, `show` and `history` read metadata columns
only and never load torch; `import` and `export` load it because they handle tensors.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from persona.cli.blend_cmd import describe_blend
from persona.cli.card_cmds import card_lines, run_card_export, run_card_import
from persona.cli.defaults_cmd import describe
from persona.errors import AlreadyExistsError, ConfigError
from persona.library.info import prompt_shape


def register(subparsers: argparse._SubParsersAction) -> None:
    def add(name: str, help_text: str, func: Any) -> argparse.ArgumentParser:
        parser = subparsers.add_parser(
            name, help=help_text, description=help_text[0].upper() + help_text[1:] + "."
        )
        parser.add_argument(
            "--library",
            metavar="PATH",
            type=Path,
            help="the persona library file (default: in the data dir)",
        )
        parser.set_defaults(func=func)
        return parser

    parser = add("list", "list the personas in the library", run_list)
    parser.add_argument("--json", action="store_true", help="print a JSON array")

    parser = add(
        "show", "show a persona: description, versions, metrics, model fingerprint", run_show
    )
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("--json", action="store_true", help="print a JSON object")

    parser = add(
        "rename",
        "rename a persona (past messages keep the name they were written under)",
        run_rename,
    )
    parser.add_argument("old", metavar="OLD")
    parser.add_argument("new", metavar="NEW")

    parser = add(
        "delete",
        "delete a persona and all its versions (its messages stay in the history)",
        run_delete,
    )
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    parser = add("rollback", "make an older version of a persona the active one", run_rollback)
    parser.add_argument("name", metavar="NAME")
    parser.add_argument(
        "version",
        metavar="VERSION",
        type=int,
        nargs="?",
        help="default: the one before the active version",
    )

    parser = add(
        "export",
        "export a persona's prompt as our file, a PEFT adapter (prompt or prefix tuning) or a KoboldAI zip, "
        "or the persona as a character card",
        run_export,
    )
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("path", metavar="PATH", type=Path)
    parser.add_argument(
        "--format",
        choices=("persona", "peft", "kobold", "card"),
        default="persona",
        help="persona: one .safetensors file (default); peft: an adapter directory; kobold: a .zip; "
        "card: a Character Card V3 .png (with a V2 chunk too) or .json naming the prompt (docs/cards.md)",
    )
    parser.add_argument(
        "--version",
        dest="prompt_version",
        metavar="N",
        type=int,
        help="export version N (default: the active one)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite PATH if it exists")

    parser = add(
        "import",
        "import a prompt (our .safetensors, a PEFT prompt- or prefix-tuning adapter directory, or a KoboldAI .zip) "
        "or a character card (.png, .json, .charx)",
        run_import,
    )
    parser.add_argument("path", metavar="PATH", type=Path)
    parser.add_argument("--name", help="the persona's name (default: the name stored in the file)")
    parser.add_argument("--description", help="replace the description stored in the file")
    parser.add_argument(
        "--model",
        metavar="PATH",
        help="check the prompt fits this model directory (default: $PERSONA_MODEL or the prepared default); "
        "a card's starting prompt is made for it",
    )

    parser = add(
        "history", "list past conversations, or the messages of conversation ID", run_history
    )
    parser.add_argument("id", metavar="ID", type=int, nargs="?")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _open(args: argparse.Namespace):
    from persona.library import open_library

    return open_library(args.library)


def _open_for_reading(args: argparse.Namespace):
    """list, show and history: sqlite3 alone when the library is at head (no SQLAlchemy import)."""
    from persona.library.open import open_for_reading

    return open_for_reading(args.library)


def _print_json(value: Any) -> None:
    """An object indented; a list one compact item per line (indent=2 is slow for 10,000 items)."""
    if isinstance(value, list):
        items = ",\n".join("  " + json.dumps(item, ensure_ascii=False) for item in value)
        sys.stdout.write(f"[\n{items}\n]\n" if value else "[]\n")
    else:
        json.dump(value, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")


def _nll(metrics: dict | None) -> str:
    """'2.31 (none 3.40)': held-out NLL with the persona, and without any prompt."""
    nll = (metrics or {}).get("nll") or {}
    persona, none = nll.get("persona"), nll.get("no_prompt")
    if not isinstance(persona, (int, float)):
        return "-"
    return f"{persona:.2f}" + (f" (none {none:.2f})" if isinstance(none, (int, float)) else "")


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines)


def run_list(args: argparse.Namespace) -> int:
    lib = _open_for_reading(args)
    try:
        personas = lib.list_personas()
    finally:
        lib.close()
    if args.json:
        _print_json([p.to_dict() for p in personas])
        return 0
    if not personas:
        print(
            "no personas yet; train one with `persona train` or add one with `persona import PATH`"
        )
        return 0
    rows = [
        [
            p.name,
            str(p.active_version),
            prompt_shape(p),
            _short(p.model_id, 28) or "-",
            _nll(p.metrics),
            ",".join(p.tags),
            _short(p.description, 40),
        ]
        for p in personas
    ]
    print(_table(["NAME", "VER", "PROMPT", "MODEL", "NLL", "TAGS", "DESCRIPTION"], rows))
    return 0


def run_show(args: argparse.Namespace) -> int:
    lib = _open_for_reading(args)
    try:
        info = lib.get_persona(args.name)
    finally:
        lib.close()
    if args.json:
        _print_json(info.to_dict())
        return 0
    active = next(v for v in info.versions if v.active) if info.versions else None
    print(f"{info.name}  (version {info.active_version} of {len(info.versions)})")
    if info.description:
        print(f"  description: {info.description}")
    if info.tags:
        print(f"  tags:        {', '.join(info.tags)}")
    for label, text in describe(info.defaults) + card_lines(info):
        print(f"  {label + ':' if label else '':<12} {text}")
    if active is not None:
        if active.kind == "deep":
            print(
                f"  prompt:      deep: keys and values of {active.num_virtual_tokens} virtual tokens at "
                f"every layer ({active.dtype}), init {active.init}; runs on --backend torch only"
            )
        else:
            print(
                f"  prompt:      {active.num_virtual_tokens} virtual tokens x {active.hidden_size} ({active.dtype}), init {active.init}"
            )
        print(f"  model:       {active.model_id or 'unknown'}")
        print(f"  fingerprint: {active.fingerprint or 'unknown'}")
        print(f"  sha256:      {active.sha256}")
        record = active.training or {}
        if "blend" in record:
            print(f"  blended:     {describe_blend(record)}")
        elif "imported_from" in record:
            untrained = ", untrained" if record.get("trained") is False else ""
            print(
                f"  imported:    from {record['imported_from']} ({record.get('format', '?')}{untrained})"
            )
        elif record:
            print(
                f"  trained on:  {record.get('source', '?')} (speaker {record.get('speaker', '?')}), "
                f"{record.get('steps', '?')} steps, {record.get('seconds') or 0:.0f} s"
            )
            if (record.get("config") or {}).get("description_as_system"):
                print("  system:      the description, as trained (the prompt speaks after it)")
        style = (active.metrics or {}).get("style")
        if isinstance(style, dict) and isinstance(style.get("share"), dict):
            from persona.style.report import share_text

            shares = ", ".join(f"{name} {share_text(v)}" for name, v in style["share"].items())
            print(f"  style:       read as the speaker: {shares} (docs/style.md)")
            identity = style.get("identity")
            if isinstance(identity, dict) and style.get("character"):
                named = ", ".join(
                    f"{name} {sum(bool(a.get('named')) for a in answers)}/{len(answers)}"
                    for name, answers in identity.items()
                    if isinstance(answers, list)
                )
                print(f"  names itself: as {style['character']} when asked who it is: {named}")
    rows = []
    for v in info.versions:
        metrics = v.metrics or {}
        nll = metrics.get("nll") or {}
        written = nll.get("written_prompt")
        rows.append(
            [
                ("*" if v.active else " ") + str(v.version),
                v.created.strftime("%Y-%m-%d %H:%M"),
                prompt_shape(v),
                v.init,
                _nll(metrics),
                f"{written:.2f}" if isinstance(written, (int, float)) else "-",
                str(metrics.get("examples", "-")),
            ]
        )
    print()
    print(_table(["VER", "CREATED (UTC)", "PROMPT", "INIT", "NLL SOFT", "HARD", "EXAMPLES"], rows))
    return 0


def run_rename(args: argparse.Namespace) -> int:
    lib = _open(args)
    try:
        lib.rename(args.old, args.new)
    finally:
        lib.close()
    print(f"renamed {args.old!r} to {args.new!r}")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    lib = _open(args)
    try:
        info = lib.get_persona(args.name)
        if not args.yes:
            if not sys.stdin.isatty():
                raise ConfigError(
                    f"deleting {info.name!r} needs confirmation; pass --yes to delete without asking"
                )
            answer = input(
                f"delete persona {info.name!r} and its {len(info.versions)} version(s)? [y/N] "
            )
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing deleted")
                return 1
        lib.delete(info.name)
    finally:
        lib.close()
    print(
        f"deleted {info.name!r} ({len(info.versions)} version(s)); its messages stay in the history"
    )
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    lib = _open(args)
    try:
        version = lib.rollback(args.name, args.version)
        total = len(lib.get_persona(args.name).versions)
    finally:
        lib.close()
    print(f"{args.name!r} now uses version {version.version} of {total}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from persona.formats import write_prompt

    if args.format == "card":
        library = _open_for_reading(args)
        try:
            return run_card_export(args, library)
        finally:
            library.close()
    lib = _open(args)
    try:
        prompt = lib.get_prompt(args.name, args.prompt_version)
        if args.format == "persona":  # the only format with room for them
            from persona.formats.defaults import attach_defaults

            attach_defaults(prompt, lib.get_defaults(args.name))
    finally:
        lib.close()
    path = write_prompt(prompt, args.path, args.format, force=args.force)
    print(f"exported {prompt.name!r} ({prompt_shape(prompt)}) to {path} as {args.format}")
    if prompt.system and args.format != "persona":
        print(
            f"note: {prompt.name!r} was trained to speak after its description as the system "
            f"message; the {args.format} format has no place for it, so give it as the system "
            f"prompt where the file is used: {prompt.system}",
            file=sys.stderr,
        )
    return 0


def run_import(args: argparse.Namespace) -> int:
    from persona.formats import detect_format, read_prompt
    from persona.formats.card_files import card_kind
    from persona.formats.fit import check_width
    from persona.library.records import check_name
    from persona.model.location import ready_model_dir

    if card_kind(args.path) is not None:
        return run_card_import(args)
    fmt = detect_format(args.path)
    prompt = read_prompt(args.path)
    defaults = _take_defaults(prompt, args.path)
    model_dir = ready_model_dir(args.model)
    if model_dir is not None:
        check_width(prompt, model_dir)
    name = args.name or prompt.name
    try:
        check_name(name)
    except Exception as exc:
        raise ConfigError(f"{exc}; pass --name NAME to choose one") from None
    lib = _open(args)
    try:
        if lib.has_persona(name):
            raise AlreadyExistsError(
                f"a persona named {name!r} already exists; pass --name NEW to import it under another name"
            )
        version = lib.add_version(
            name,
            prompt,
            description=args.description,
            model_id=prompt.base_model,
            training={"imported_from": str(args.path.resolve()), "format": fmt},
            defaults=defaults,
        )
    finally:
        lib.close()
    print(f"imported {name!r} ({prompt_shape(version)}) from {fmt} file {args.path}")
    return 0


def _take_defaults(prompt: Any, path: Path) -> Any:
    """The persona defaults a file of ours carries; one that does not validate is left out with a
    warning, as the soft prompt itself is still good."""
    from persona.errors import PromptFormatError
    from persona.formats.defaults import take_defaults

    try:
        return take_defaults(prompt)
    except PromptFormatError as exc:
        print(f"persona: warning: {path}: {exc}; imported without them", file=sys.stderr)
        return None


def run_history(args: argparse.Namespace) -> int:
    lib = _open_for_reading(args)
    try:
        if args.id is None:
            conversations = lib.list_conversations()
        else:
            messages = lib.get_messages(args.id)
    finally:
        lib.close()
    if args.id is None:
        if args.json:
            _print_json([c.to_dict() for c in conversations])
        elif not conversations:
            print("no conversations yet; start one with `persona chat`")
        else:
            rows = [
                [
                    str(c.id),
                    c.updated.strftime("%Y-%m-%d %H:%M"),
                    str(c.message_count),
                    _short(", ".join(c.personas), 30),
                    _short(c.title, 50),
                ]
                for c in conversations
            ]
            print(_table(["ID", "UPDATED (UTC)", "MSGS", "PERSONAS", "TITLE"], rows))
        return 0
    if args.json:
        _print_json([m.to_dict() for m in messages])
        return 0
    for m in messages:
        who = m.persona or m.role if m.role != "user" else "you"
        note = " [cut short]" if m.cut_short else ""
        print(f"[{m.created.strftime('%H:%M')}] {who}: {m.content}{note}")
    return 0
