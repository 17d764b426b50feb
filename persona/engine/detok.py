"""Incremental detokenization: turn a growing list of token ids into text pieces as they settle."""

from __future__ import annotations

from typing import Any


class StreamDecoder:
    """Decodes the whole reply so far and yields what is new, holding back unfinished UTF-8."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a multi-byte character split across tokens: wait for the rest
            return ""
        piece = text[len(self.emitted) :] if text.startswith(self.emitted) else ""
        self.emitted = text if text.startswith(self.emitted) else self.emitted
        return piece

    @property
    def text(self) -> str:
        return self.emitted
