"""The key bindings and slash commands, in one table: shown by /help and written to docs/tui.md."""

from __future__ import annotations

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
    lines += [
        "",
        "A message that starts with `//` is sent as text beginning with `/`. Replies start with "
        "temperature 0.7, top_p 0.9, top_k 50 and at most 256 new tokens (or the `persona chat` "
        "flags); `/set` changes them for the rest of the session.",
    ]
    return "\n".join(lines) + "\n"
