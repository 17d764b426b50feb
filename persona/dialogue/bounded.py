"""Read a dialogue log as UTF-8 lines without ever holding an unbounded line in memory.

A log is read line by line from the binary file with a per-line byte limit, so a 50 MB file
with no newline is refused after reading 1 MB, not parsed. Every line is decoded strictly:
a file that is not UTF-8 is refused with the line where it stops being text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from persona.errors import DialogueError

MAX_LINE_BYTES = 1024 * 1024  # one turn, or one JSONL conversation; far beyond any real chat line
MAX_FILE_BYTES = 512 * 1024 * 1024


class LogFile:
    """A dialogue log on disk, read as numbered text lines (1-based) and hashed as it is read."""

    def __init__(self, path: str | Path, *, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.path = Path(path)
        self.max_line_bytes = max_line_bytes
        self._digest = hashlib.sha256()
        try:
            if self.path.is_dir():
                raise DialogueError(
                    f"{self.path} is a directory; pass a dialogue log file (.txt, .jsonl or .csv)"
                )
            size = self.path.stat().st_size
        except FileNotFoundError:
            raise DialogueError(
                f"{self.path}: no such file; pass the path of a dialogue log"
            ) from None
        except OSError as exc:
            raise DialogueError(f"cannot read {self.path} ({exc.strerror})") from None
        if size > MAX_FILE_BYTES:
            raise DialogueError(
                f"{self.path} is {size // (1024 * 1024)} MB; logs over {MAX_FILE_BYTES // (1024 * 1024)} MB are not read, split it first"
            )
        if size == 0:
            raise DialogueError(
                f"{self.path} is empty; it needs dialogue lines such as `NAME: text`"
            )

    @property
    def sha256(self) -> str:
        """Hash of the bytes read so far (all of them once `lines()` is exhausted)."""
        return self._digest.hexdigest()

    def lines(self) -> Iterator[tuple[int, str]]:
        """(line number, text without its line ending) for each line of the file."""
        self._digest = hashlib.sha256()
        try:
            handle = self.path.open("rb")
        except OSError as exc:
            raise DialogueError(f"cannot read {self.path} ({exc.strerror})") from None
        with handle:
            number = 0
            while True:
                raw = handle.readline(self.max_line_bytes + 1)
                if not raw:
                    return
                number += 1
                if len(raw) > self.max_line_bytes:
                    raise DialogueError(
                        f"{self.path} line {number} is longer than {self.max_line_bytes // 1024} KB; "
                        "this is not a dialogue log (put one turn per line)"
                    )
                self._digest.update(raw)
                yield number, self._decode(raw, number)

    def _decode(self, raw: bytes, number: int) -> str:
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise DialogueError(
                f"{self.path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {number}); "
                "convert it first, e.g. `iconv -f latin1 -t utf-8`"
            ) from None
        return text.rstrip("\r\n")

    def head(self, max_lines: int = 20) -> list[str]:
        """The first non-blank lines, for sniffing the format."""
        found: list[str] = []
        for _, line in self.lines():
            if line.strip():
                found.append(line)
                if len(found) >= max_lines:
                    break
        return found
