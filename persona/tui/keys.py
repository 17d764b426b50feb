"""The key bindings and slash commands, in one table: shown by /help and written to docs/tui.md."""

from __future__ import annotations

from persona.engine.config import GenerationConfig
from persona.tui.commands import help_rows

KEYS: tuple[tuple[str, str], ...] = (
    ("Enter", "send the message"),
    (
        "Ctrl+J",
        "new line in the message (Shift+Enter / Alt+Enter too, where the terminal reports them)",
    ),
    ("Esc", "stop the reply being written (what came so far is kept, marked cut short)"),
    ("F2 / Ctrl+O", "persona picker: the next reply comes from the persona you pick"),
    ("F3", "saved conversations: open one to continue it"),
    ("Ctrl+N", "new conversation"),
    ("Ctrl+R", "regenerate the last reply"),
    ("Ctrl+P", "command palette: new, retry, undo, conversations, help, and each persona by name"),
    ("F1", "the help screen: these keys and the slash commands"),
    ("Ctrl+Q", "quit (everything is already saved)"),
)


def help_markdown() -> str:
    """Markdown tables of the keys and the slash commands."""
    lines = ["## Keys", "", "| Key | Action |", "| --- | --- |"]
    lines += [f"| {key} | {action} |" for key, action in KEYS]
    lines += ["", "## Slash commands", "", "| Command | Action |", "| --- | --- |"]
    lines += [f"| `{usage.replace('|', chr(92) + '|')}` | {text} |" for usage, text in help_rows()]
    built_in = GenerationConfig()
    lines += [
        "",
        "A message that starts with `//` is sent as text beginning with `/`. Each reply uses the "
        "settings you gave (the `persona chat` flags, `/set`) over the speaking persona's own "
        "(`persona set`) over the built-in ones: temperature "
        f"{built_in.temperature:g}, top_p {built_in.top_p:g}, top_k {built_in.top_k}, "
        f"repetition_penalty {built_in.repetition_penalty:g} and at most "
        f"{built_in.max_new_tokens} new tokens. Yours last the session, across persona switches; "
        "the persona's stop strings end its replies, and its greeting opens a new conversation.",
    ]
    return "\n".join(lines) + "\n"
