"""The request bodies the API takes, and what they become: messages, a GenerationConfig, stops.

Parameters persona cannot honour are refused with a 400 that names them when they ask for
something other than OpenAI's default; parameters that change nothing here (`user`, `metadata`,
`store`, ...) and unknown ones are accepted and ignored, as clients send many of them.
`top_k` and `repetition_penalty` are taken as extensions (vLLM's names for them), and `strength`
(persona strength, persona.engine.guidance) as persona's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from persona.engine.config import (
    MAX_STOP_STRINGS,
    MAX_STRENGTH,
    GenerationConfig,
    PersonaDefaults,
)
from persona.engine.config import stop_strings as merged_stops
from persona.errors import ConfigError
from persona.prompt.render import Message
from persona.serve.errors import APIError

SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes


def _off(value: Any) -> bool:
    return not value


# parameter -> whether its value is the default (anything else is refused)
UNSUPPORTED: dict[str, Callable[[Any], bool]] = {
    "n": lambda value: value in (None, 1),
    "frequency_penalty": _off,
    "presence_penalty": _off,
    "logit_bias": _off,
    "logprobs": _off,
    "top_logprobs": _off,
    "tools": _off,
    "functions": _off,
    "tool_choice": lambda value: value in (None, "none", "auto"),
    "function_call": lambda value: value in (None, "none", "auto"),
    "response_format": lambda value: (
        value is None or (isinstance(value, dict) and value.get("type") == "text")
    ),
    "modalities": lambda value: value in (None, ["text"]),
    "audio": _off,
    "prediction": _off,
    "reasoning_effort": _off,
    "web_search_options": _off,
    "echo": _off,
    "best_of": lambda value: value in (None, 1),
    "suffix": _off,
}


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class StreamOptions(_Body):
    include_usage: bool = False


class ContentPart(_Body):
    type: str
    text: str | None = None


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class _Sampling(_Body):
    """What both endpoints share."""

    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, le=1_000_000)
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    strength: float | None = Field(None, ge=0, le=MAX_STRENGTH)
    max_tokens: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stop: str | list[str] | None = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_Sampling):
    prompt: str | list[str]


@dataclass
class Limits:
    """What one request may ask for (flags of `persona serve`)."""

    max_tokens: int = 1024  # per reply; also the default when a request names none
    max_messages: int = 256
    strength: float | None = None  # the server's default persona strength (--strength), under
    # a request's and the persona's own

    def __post_init__(self) -> None:
        if self.strength is not None:
            GenerationConfig(strength=self.strength)  # the one rule, in one line


def refuse_unsupported(body: _Body) -> None:
    for name, is_default in UNSUPPORTED.items():
        extra = body.model_extra or {}
        if name in extra and not is_default(extra[name]):
            raise APIError(
                400,
                f"{name}={extra[name]!r} is not supported by persona; leave it out",
                param=name,
                code="unsupported_parameter",
            )


def generation_config(
    body: _Sampling, limits: Limits, defaults: PersonaDefaults | None = None
) -> GenerationConfig:
    """The sampling settings: what the request gives, else the persona's own defaults, else the
    built-in ones (persona.engine.config)."""
    defaults = defaults or PersonaDefaults()
    # only the chat endpoint has max_completion_tokens; elsewhere it is an unknown extra field
    asked = body.max_completion_tokens if isinstance(body, ChatRequest) else None
    param = "max_completion_tokens" if asked is not None else "max_tokens"
    if asked is None:
        asked = body.max_tokens
    if asked is not None and asked > limits.max_tokens:
        raise APIError(
            400,
            f"{param}={asked} is more than this server's limit of {limits.max_tokens} "
            "(persona serve --max-tokens)",
            param=param,
            code="invalid_value",
        )
    given = {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": body.top_k,
        "repetition_penalty": body.repetition_penalty,
        "seed": body.seed,
        "strength": body.strength,
    }
    settings = defaults.apply(given)
    if "strength" not in settings and limits.strength is not None:
        settings["strength"] = limits.strength
    if asked is None:
        asked = min(settings.get("max_new_tokens", limits.max_tokens), limits.max_tokens)
    settings["max_new_tokens"] = asked
    try:
        return GenerationConfig(**settings)
    except ConfigError as exc:  # a value the schema let through but the settings refuse
        field = str(exc).split("=", 1)[0]
        raise APIError(400, str(exc), param=field, code="invalid_value") from None


def stop_strings(body: _Sampling, defaults: PersonaDefaults | None = None) -> list[str]:
    """The request's stop strings, then the persona's own: a client that sends its own (most
    chat front ends do) still ends the reply where the persona's would."""
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > MAX_STOP_STRINGS or any(not stop for stop in stops):  # 4, as OpenAI
        raise APIError(
            400,
            f"stop takes up to {MAX_STOP_STRINGS} non-empty strings, got {body.stop!r}",
            param="stop",
            code="invalid_value",
        )
    return merged_stops(defaults, stops)


def chat_messages(body: ChatRequest, limits: Limits) -> tuple[list[Message], str | None]:
    """The conversation and the written system text: every system (or developer) message, in
    order, becomes one system text after the soft prompt, as `persona reply --system` gives."""
    if len(body.messages) > limits.max_messages:
        raise APIError(
            400,
            f"{len(body.messages)} messages are more than this server's limit of "
            f"{limits.max_messages} (persona serve --max-messages)",
            param="messages",
            code="invalid_value",
        )
    conversation: list[Message] = []
    system: list[str] = []
    for index, message in enumerate(body.messages):
        text = _text(message, index)
        if message.role in ("system", "developer"):
            system.append(text)
        else:
            conversation.append({"role": message.role, "content": text})
    if not conversation or not conversation[-1]["content"].strip():
        raise APIError(
            400,
            "the conversation needs a last user or assistant message with text",
            param="messages",
            code="invalid_value",
        )
    return conversation, ("\n\n".join(system) if system else None)


def _text(message: ChatMessage, index: int) -> str:
    if isinstance(message.content, str):
        return message.content
    param = f"messages[{index}].content"
    if message.content is None:
        raise APIError(400, f"{param} is missing", param=param, code="invalid_value")
    texts = []
    for part in message.content:
        if part.type != "text" or part.text is None:
            raise APIError(
                400,
                f"{param}: only text parts are supported, not {part.type!r}",
                param=param,
                code="unsupported_content",
            )
        texts.append(part.text)
    return "".join(texts)


def completion_prompt(body: CompletionRequest) -> str:
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1 or not prompts[0]:
        raise APIError(
            400, "prompt must be one non-empty string", param="prompt", code="invalid_value"
        )
    return prompts[0]
