"""The vLLM servers behind a gateway: each one checked before it gets a request, and the choice of
the one to send the next request to.

A server is taken only once it passes, each failure one line that says what to do:
- it serves (`/v1/models`) and answers a short text as token ids, greedy with log-probabilities;
- its tokenizer reads that text into the gateway's ids (`/tokenize`);
- it runs persona's KV connector: a request naming a persona by a name that cannot be one fails
  there, where a server without the connector would answer it;
- its model's KV cache has the gateway's layout: a request carrying the width of the gateway's
  personas (`persona_width`) is answered, where the connector of another model fails it;
- where the server also takes `prompt_embeds` (`--enable-prompt-embeds`, optional), the same
  text as embeddings from the gateway's own matrix answers as the ids did: another matrix of the
  same shape answers otherwise. Without that flag this check is left out.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx2 as httpx  # httpx, as huggingface_hub and openai install it

from persona.engine.chat import ChatEngine
from persona.engine.vllm.wire import COMPLETIONS, ENABLE_EMBEDS_HINT, encode_embeds, error_message
from persona.errors import ConfigError, first_line
from persona.kvconnector import CONNECTOR_CLASS, PACKAGE

PROBE_SHA_PARAM = "persona_kv"  # persona.kvconnector.connector.SHA_PARAM (it imports vllm)
WIDTH_PARAM = "persona_width"
PROBE_TEXT = "The quick brown fox jumps over the lazy dog. The capital of France is"
PROBE_TOKENS = 4
PROBE_TIMEOUT_S = 60.0  # a CPU server's first request compiles kernels
# how far the probe's log-probabilities may differ between ids and embeddings: float noise on
# one model; another model's differ by far more
PROBE_TOLERANCE = {"float32": 1e-3, "bfloat16": 5e-2, "float16": 5e-2}


class _NoEmbeds(Exception):
    """The server takes no prompt_embeds: the check by embeddings is left out."""


class UpstreamUnreachable(ConfigError):
    """Nothing answers at the URL (yet): a server that may still be starting."""


@dataclass
class Upstream:
    """One vLLM server: where it is, what it serves, how busy this gateway keeps it."""

    url: str  # base URL, without /v1
    served_name: str  # the model name its requests must carry (--served-model-name)
    root: str  # what it loaded (its --model)
    max_model_len: int | None
    in_flight: int = 0
    picked: int = 0  # requests sent so far: ties go to the one picked least
    alive: bool = True
    last_error: str = ""  # why it was last refused, said once


def base_url(url: str) -> str:
    """`http://host:8000/v1/` -> `http://host:8000`; refuses what is not an http(s) URL."""
    text = url.strip().rstrip("/")
    if text.endswith("/v1"):
        text = text[: -len("/v1")]
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"--vllm-url {url!r} is not an http(s) URL such as http://127.0.0.1:8000")
    return text


def choose(upstreams: list[Upstream]) -> Upstream | None:
    """The live server with the fewest requests in flight (the least used on a tie)."""
    alive = [upstream for upstream in upstreams if upstream.alive]
    if not alive:
        return None
    return min(alive, key=lambda upstream: (upstream.in_flight, upstream.picked))


def connect(
    urls: list[str], engine: ChatEngine, dtype: str, warn: Callable[[str], None]
) -> list[Upstream]:
    """The servers at `urls`, each checked. One refused is left out with a warning; one not
    reachable yet is kept as down (it is checked again while serving). Raises ConfigError where
    none can serve now."""
    upstreams: list[Upstream] = []
    errors: list[str] = []
    for url in dict.fromkeys(base_url(url) for url in urls):
        try:
            upstreams.append(check_upstream(url, engine, dtype))
        except UpstreamUnreachable as exc:
            errors.append(str(exc))
            upstreams.append(Upstream(url, "", "", None, alive=False, last_error=str(exc)))
            warn(f"{exc}; it is left out until it answers")
        except ConfigError as exc:
            errors.append(str(exc))
            warn(f"{exc}; it is left out")
    if not any(upstream.alive for upstream in upstreams):
        if len(errors) == 1:
            raise ConfigError(errors[0])
        raise ConfigError(f"none of the {len(errors)} vLLM servers can serve: " + "; ".join(errors))
    return upstreams


def check_upstream(url: str, engine: ChatEngine, dtype: str, *, timeout: float = PROBE_TIMEOUT_S):
    """The server at `url`, checked as the module docstring says; raises ConfigError."""
    url = base_url(url)
    ours = engine.loaded
    another = (
        f"the vLLM server at {url} runs {{root!r}}, not this gateway's model "
        f"{ours.model_id!r} ({ours.fingerprint}): {{why}}; start vLLM on the same model directory"
    )
    with httpx.Client(timeout=timeout) as client:
        served_name, root, max_model_len = _served_model(client, url)
        ids = list(engine.tokenizer.encode(PROBE_TEXT, add_special_tokens=False))
        by_ids = _probe(client, url, {"model": served_name, "prompt": ids}, "token ids")
        theirs = _tokenize(client, url, served_name)
        if theirs is not None and theirs != ids:
            why = f"its tokenizer reads a probe as {theirs[:8]}..., ours as {ids[:8]}..."
            raise ConfigError(another.format(root=root, why=why))
        embeds = encode_embeds(engine.backend.embed(ids), dtype)  # (T, D)
        try:
            by_embeds = _probe(
                client, url, {"model": served_name, "prompt_embeds": embeds}, "prompt_embeds"
            )
        except _NoEmbeds:
            by_embeds = None
        mismatch = by_embeds and _disagreement(by_ids, by_embeds, PROBE_TOLERANCE[dtype])
        if mismatch:
            raise ConfigError(another.format(root=root, why=mismatch))
        if _answers(client, url, {"model": served_name, "prompt": ids}, {PROBE_SHA_PARAM: "probe"}):
            raise ConfigError(
                f"the vLLM server at {url} runs without persona's KV connector; start it with "
                f"--kv-transfer-config '{connector_config()}' (docs/vllm.md)"
            )
        layout = engine.backend.layout
        if layout is not None and not _answers(
            client, url, {"model": served_name, "prompt": ids}, {WIDTH_PARAM: layout.width}
        ):
            why = f"its KV cache is not {layout} (a persona is {layout.width} wide)"
            raise ConfigError(another.format(root=root, why=why))
    return Upstream(url, served_name, root, max_model_len)


def connector_config(extra: dict[str, Any] | None = None) -> str:
    """vLLM's --kv-transfer-config for persona's KV connector (as scripts/vllm-venv.sh installs
    it), with `extra` as its kv_connector_extra_config."""
    config = {
        "kv_connector": CONNECTOR_CLASS,
        "kv_connector_module_path": f"{PACKAGE}.connector",
        "kv_role": "kv_both",
        "kv_connector_extra_config": extra or {"url": "http://GATEWAY:PORT"},
    }
    return json.dumps(config, separators=(",", ":"))


def _tokenize(client: httpx.Client, url: str, served_name: str) -> list[int] | None:
    """vLLM's reading of the probe text (None where the server has no /tokenize)."""
    try:
        response = client.post(
            f"{url}/tokenize",
            json={"model": served_name, "prompt": PROBE_TEXT, "add_special_tokens": False},
        )
        tokens = response.json()["tokens"] if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
    return [int(t) for t in tokens] if isinstance(tokens, list) else None


def _answers(
    client: httpx.Client, url: str, prompt: dict[str, Any], params: dict[str, Any]
) -> bool:
    """Whether the server answers a one-token request carrying `params` as kv_transfer_params."""
    body = {**prompt, "max_tokens": 1, "temperature": 0, "kv_transfer_params": params}
    try:
        response = client.post(f"{url}{COMPLETIONS}", json=body)
    except httpx.HTTPError as exc:
        raise UpstreamUnreachable(
            f"cannot reach the vLLM server at {url}: {first_line(exc)}"
        ) from None
    return response.status_code == 200


def _served_model(client: httpx.Client, url: str) -> tuple[str, str, int | None]:
    try:
        response = client.get(f"{url}/v1/models")
    except httpx.HTTPError as exc:
        raise UpstreamUnreachable(
            f"cannot reach the vLLM server at {url}: {first_line(exc)}"
        ) from None
    if response.status_code != 200:
        raise ConfigError(
            f"{url}/v1/models answered {response.status_code} ({error_message(response.content)});"
            " is it a vLLM server?"
        )
    try:
        entry = response.json()["data"][0]
        name = str(entry["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise ConfigError(f"{url}/v1/models lists no model; is it a vLLM server?") from None
    length = entry.get("max_model_len")
    return name, str(entry.get("root") or name), int(length) if length else None


def _probe(client: httpx.Client, url: str, prompt: dict[str, Any], kind: str) -> dict[str, Any]:
    body = {
        **prompt,
        "max_tokens": PROBE_TOKENS,
        "temperature": 0,
        "logprobs": 1,
        "return_token_ids": True,
    }
    try:
        response = client.post(f"{url}{COMPLETIONS}", json=body)
    except httpx.HTTPError as exc:
        raise UpstreamUnreachable(
            f"cannot reach the vLLM server at {url}: {first_line(exc)}"
        ) from None
    if response.status_code != 200:
        message = error_message(response.content)
        if ENABLE_EMBEDS_HINT in message:
            raise _NoEmbeds(message)
        if "hidden_size" in message:
            raise ConfigError(
                f"the vLLM server at {url} runs a model of another width ({message}); start "
                "vLLM on the same model directory"
            )
        raise ConfigError(f"the vLLM server at {url} refused a probe by {kind}: {message}")
    try:
        choice = response.json()["choices"][0]
        return {
            "token_ids": [int(t) for t in choice.get("token_ids") or []],
            "logprobs": [float(p) for p in (choice.get("logprobs") or {})["token_logprobs"]],
        }
    except (ValueError, KeyError, IndexError, TypeError):
        raise ConfigError(f"the vLLM server at {url} gave an unreadable probe answer") from None


def _disagreement(by_ids: dict[str, Any], by_embeds: dict[str, Any], tolerance: float) -> str:
    """Why the two answers differ beyond `tolerance`, or "" where they agree."""
    if by_ids["token_ids"] != by_embeds["token_ids"]:
        return (
            f"a probe by token ids gave tokens {by_ids['token_ids']}, by our embeddings "
            f"{by_embeds['token_ids']}"
        )
    gaps = [abs(a - b) for a, b in zip(by_ids["logprobs"], by_embeds["logprobs"], strict=False)]
    if not gaps or max(gaps) > tolerance:
        worst = max(gaps) if gaps else float("nan")
        return f"a probe's log-probabilities differ by {worst:.3g} (tolerance {tolerance:g})"
    return ""
