"""Incremental detokenization: turn a growing list of token ids into text pieces as they settle.

Each step decodes only a short window (the approach of vLLM's detokenizer): from a prefix offset,
a few tokens already shown (context, so that tokenizers which mark word starts, like
sentencepiece's "▁", decode the boundary right), up to the read offset, where shown text ends;
then the new tokens, whose text is what the window adds. Text that ends in an unfinished UTF-8
character ("\ufffd", a character split across tokens) is held back until it completes, and
`finish()` gives what is still held when the reply ends. The pieces then add up to the reply
decoded at once. The work per token stays bounded however long the reply.

Known limit: byte-fallback vocabularies (Llama 2, Mistral) decode a run of byte tokens as a whole
and turn every byte of it into "\ufffd" if any is invalid, so a run that is valid when shown and
ends invalid differs from the reply decoded at once.
"""

from __future__ import annotations

import os
from typing import Any

CONTEXT_TOKENS = 5  # tokens already shown that each window starts with
MAX_CHARACTER_TOKENS = 4  # a UTF-8 character has at most 4 bytes, so at most 4 tokens
UNFINISHED = "\ufffd"  # what decoding makes of an incomplete (or invalid) UTF-8 sequence


class StreamDecoder:
    """Text pieces of a reply decoded token by token; pushed pieces plus `finish()` equal
    `tokenizer.decode(ids, skip_special_tokens=True)`."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""
        self._prefix = 0  # the window starts here
        self._read = 0  # tokens up to here are shown
        # (token offset, len(emitted)) where shown text settled: the only safe window starts,
        # since there the text decoded so far is whole characters
        self._settled: list[tuple[int, int]] = [(0, 0)]

    def push(self, token_id: int) -> str:
        """The text this token settles: "" while it is held back, else one or more characters."""
        self.ids.append(token_id)
        held = len(self.ids) - self._read
        if held > MAX_CHARACTER_TOKENS and held & (held - 1):
            # a run longer than any character that still does not decode (invalid bytes): look
            # again at powers of two, or when the new token ends in a whole character, so that
            # such a run costs linear work rather than a decode of the whole run per token
            alone = self._decode([token_id])
            if not alone or alone.endswith(UNFINISHED):
                return ""
        return self._settle(final=False)

    def finish(self) -> str:
        """What is still held back when the reply ends (an unfinished character becomes "\ufffd")."""
        return self._settle(final=True) if len(self.ids) > self._read else ""

    @property
    def text(self) -> str:
        return self.emitted

    def _settle(self, final: bool) -> str:
        shown = self._decode(self.ids[self._prefix : self._read])
        window = self._decode(self.ids[self._prefix :])
        if window.endswith(UNFINISHED) and not final:
            return ""  # a multi-byte character is still incomplete
        if window.startswith(shown):
            piece = window[len(shown) :]
        else:  # a tokenizer that rewrote text already shown: shown text stays, go on after it
            piece = window[len(os.path.commonprefix([shown, window])) :]
        self.emitted += piece
        self._read = len(self.ids)
        self._settled.append((self._read, len(self.emitted)))
        self._move_prefix()
        return piece

    def _move_prefix(self) -> None:
        """Start the window at the latest settled offset with CONTEXT_TOKENS tokens and some text
        after it (skipped special tokens give no context to a word-start marker)."""
        for index in range(len(self._settled) - 1, -1, -1):
            offset, length = self._settled[index]
            if self._read - offset >= CONTEXT_TOKENS and len(self.emitted) > length:
                self._prefix = offset
                del self._settled[:index]
                return

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""
