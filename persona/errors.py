"""One error hierarchy. Library code raises these; only the CLI and the TUI turn them into messages.

Every message is one line that says what was wrong and what to do about it.
"""


class PersonaError(Exception):
    """Base class: a mistake or condition the user can act on (never a bug)."""


class ModelError(PersonaError):
    """The base model cannot be found, loaded or used."""


class PromptMismatchError(PersonaError):
    """A soft prompt was trained for another model (width or fingerprint differ)."""


class PromptFormatError(PersonaError):
    """A soft-prompt file (ours, PEFT, KoboldAI) is malformed or unsafe."""


class LibraryError(PersonaError):
    """The persona library file cannot be opened, migrated or written."""


class NotFoundError(PersonaError):
    """A persona, version or conversation that does not exist was named."""


class AlreadyExistsError(PersonaError):
    """A name that must be unique is taken."""


class DialogueError(PersonaError):
    """A dialogue log cannot be read or does not hold enough usable examples."""


class QueueFull(PersonaError):
    """Every row is busy and the queue is at its limit, or the server is stopping: retry later."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RemoteError(PersonaError):
    """A server replies come from cannot be reached, refused the request or failed it."""


class ConfigError(PersonaError, ValueError):
    """A configuration value is out of range; the message names the field and quotes the value."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception's message, at most `limit` characters; the
    exception's type name where the message is empty (a bare `raise ValueError()`)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(exc).__name__
