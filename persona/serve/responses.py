"""The response objects, in OpenAI's shapes: `chat.completion`, `chat.completion.chunk`,
`text_completion`, and the server-sent events that carry chunks."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

DONE_EVENT = "data: [DONE]\n\n"


@dataclass
class Reply:
    """What one response is about: its id, the model id the client named, the kind of endpoint."""

    model: str
    chat: bool = True
    system_fingerprint: str = ""
    id: str = field(default="")
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        if not self.id:
            self.id = ("chatcmpl-" if self.chat else "cmpl-") + secrets.token_hex(12)

    def _envelope(self, kind: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.system_fingerprint,
        }

    def whole(self, text: str, finish_reason: str, usage: dict[str, int]) -> dict[str, Any]:
        """The non-streamed response."""
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
            return {**self._envelope("chat.completion"), "choices": [choice], "usage": usage}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return {**self._envelope("text_completion"), "choices": [choice], "usage": usage}

    def chunk(
        self,
        text: str | None = None,
        *,
        first: bool = False,
        finish_reason: str | None = None,
        with_usage: bool = False,
    ) -> str:
        """One streamed event: a delta (the first one carries the role), or the last, with its
        finish_reason. With `with_usage`, every chunk has `usage: null` as OpenAI's do."""
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta}
            kind = "chat.completion.chunk"
        else:
            choice, kind = {"index": 0, "text": text or ""}, "text_completion"
        choice["logprobs"] = None
        choice["finish_reason"] = finish_reason
        data = {**self._envelope(kind), "choices": [choice]}
        if with_usage:
            data["usage"] = None
        return sse(data)

    def usage_chunk(self, usage: dict[str, int], extra: dict[str, Any] | None = None) -> str:
        """The chunk `stream_options.include_usage` asks for: no choices, the counts."""
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return sse({**self._envelope(kind), "choices": [], "usage": usage, **(extra or {})})


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
