"""Incremental detokenization: turn a growing list of token ids into text pieces as they settle.

Each step decodes only a short window: the last few tokens already shown (context, so that
tokenizers which mark word starts, like sentencepiece's "▁", decode the boundary right) plus the
new ones, and emits what the new ones add. Unfinished UTF-8 (a character split across tokens)
is held back until it completes. The cost per token stays constant however long the reply.
"""

from __future__ import annotations

from typing import Any

CONTEXT_TOKENS = 5  # tokens already shown that each window starts with


class StreamDecoder:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""
        self._prefix = 0  # the window starts here
        self._read = 0  # tokens up to here are shown

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        shown = self._decode(self.ids[self._prefix : self._read])
        window = self._decode(self.ids[self._prefix :])
        if window.endswith("\ufffd") or len(window) <= len(shown) or not window.startswith(shown):
            return ""  # nothing new yet (or a multi-byte character is still incomplete)
        piece = window[len(shown) :]
        self._read = len(self.ids)
        self._prefix = max(self._prefix, self._read - CONTEXT_TOKENS)
        self.emitted += piece
        return piece

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""

    @property
    def text(self) -> str:
        return self.emitted
