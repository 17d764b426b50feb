"""What goes over the wire to a vLLM server: token ids (with a persona's N placeholders and its
keys and values named for persona's KV connector, `ids_body`), the sampling settings in vLLM's
names, and the reading of its answers (server-sent events, errors).

`prompt_embeds` (base64 of `torch.save` of a `(T, D)` tensor) remain for the start-up probe only,
where a server takes them: the same text by ids and by the gateway's own embeddings must agree.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Collection, Sequence
from typing import Any

import torch

from persona.engine.config import GenerationConfig
from persona.errors import ConfigError, PersonaError, first_line

WIRE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
COMPLETIONS = "/v1/completions"
ENABLE_EMBEDS_HINT = "--enable-prompt-embeds"  # in vLLM's refusal of prompt_embeds


def encode_embeds(embeds: torch.Tensor, dtype: str) -> str:
    """base64 of torch.save of the (T, D) tensor in `dtype`, as vLLM's `prompt_embeds` wants."""
    buffer = io.BytesIO()
    torch.save(embeds.to(WIRE_DTYPES[dtype]).contiguous(), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def sampling(config: GenerationConfig, stop_ids: Collection[int]) -> dict[str, Any]:
    """The request fields for `config`, in vLLM's names. Stop strings are not sent: the
    runner cuts them, as every runner does (`watch_stops`); the end-of-turn ids are."""
    fields: dict[str, Any] = {
        "max_tokens": config.max_new_tokens,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "top_k": config.top_k,  # 0: off, in both
        "repetition_penalty": config.repetition_penalty,
        "stop_token_ids": sorted(stop_ids),
    }
    if config.greedy:  # greedy takes the top token whatever top_p and top_k say
        fields.update(top_p=1.0, top_k=0)
    if config.seed is not None:
        fields["seed"] = config.seed
    return fields


def ids_body(
    served_name: str,
    ids: Sequence[int],
    config: GenerationConfig,
    stop_ids: Collection[int],
    persona: tuple[str, int, int] | None = None,
) -> dict[str, Any]:
    """A streamed completion of token ids. With a persona, (its keys and values' sha256, N, W):
    N placeholder ids go first, persona's KV connector fills their positions with the persona's
    keys and values, and the conversation runs after them at positions N.., as in persona's own
    engine. The placeholder is the conversation's first id, which the repetition penalty counts
    already (persona's engine counts the conversation's ids, not the persona's positions), so the
    penalty is the same; the cache salt keeps one persona's cached blocks from another's."""
    body: dict[str, Any] = {
        "model": served_name,
        "prompt": list(ids),
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,
        **sampling(config, stop_ids),
    }
    if persona is not None:
        name, rows, width = persona
        body["prompt"] = [ids[0]] * rows + list(ids)
        body["kv_transfer_params"] = {
            "persona_kv": name,
            "persona_rows": rows,
            "persona_width": width,
        }
        body["cache_salt"] = name
    return body


def parse_event(line: str) -> dict[str, Any] | None:
    """One server-sent event line as JSON; None for blank lines, comments and `[DONE]`."""
    if not line.startswith("data:"):
        return None
    data = line[len("data:") :].strip()
    if not data or data == "[DONE]":
        return None
    try:
        event = json.loads(data)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def error_message(body: bytes | str) -> str:
    """The message of an OpenAI-shaped error body (vLLM's), else the body's first line."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict) and error.get("message"):
            return first_line(ValueError(str(error["message"])))
        if isinstance(data.get("message"), str):
            return first_line(ValueError(data["message"]))
    return first_line(ValueError(text)) if text.strip() else "no message"


def refused(status: int, body: bytes | str, url: str) -> Exception:
    """vLLM's refusal of a request as persona's error: a 4xx is the request's fault (400 to the
    client), anything else the server's."""
    message = error_message(body)
    if ENABLE_EMBEDS_HINT in message:
        return ConfigError(f"the vLLM server at {url} refuses prompt_embeds: {message}")
    if 400 <= status < 500:
        return ConfigError(f"the vLLM server at {url} refused the request: {message}")
    return PersonaError(f"the vLLM server at {url} failed ({status}): {message}")
