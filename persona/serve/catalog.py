"""The personas of the library as OpenAI model ids, and the model id of the bare model.

`GET /v1/models` lists every persona that fits the loaded model under its name (its active
version, which is the newest unless `persona rollback` moved it), plus one id for the model
without a persona. A request may also name a version: `hamlet@2`.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from persona.engine.backend import check_runs
from persona.engine.config import PersonaDefaults
from persona.errors import LibraryError, NotFoundError, PersonaError, PromptMismatchError
from persona.library.library import DEFAULT_PERSONA_KEY, PersonaLibrary
from persona.model.fingerprint import Fingerprint
from persona.prompt.deep import KVLayout
from persona.prompt.softprompt import SoftPrompt
from persona.serve.errors import APIError

OWNER = "persona"
_VERSIONED = re.compile(r"^(?P<name>.+)@(?P<version>[0-9]{1,9})$")


def base_model_id(model_id: str) -> str:
    """The id of the bare model: the last part of its name or directory ("SmolLM2-135M-Instruct")."""
    return Path(model_id.rstrip("/")).name or model_id


class Catalog:
    def __init__(
        self,
        library: PersonaLibrary,
        fingerprint: Fingerprint,
        model_id: str,
        layout: KVLayout | None = None,
        backend: str = "torch",
    ) -> None:
        self.library = library
        self.fingerprint = fingerprint
        # the serving backend's KV layout: None where it runs soft prompts only (vLLM, llama.cpp)
        self.layout, self.backend = layout, backend
        self.base_id = base_model_id(model_id)
        self.started = int(time.time())

    def models(self) -> list[dict[str, Any]]:
        """OpenAI model objects (extra fields: description, persona, version, default)."""
        default = self.library.get_setting(DEFAULT_PERSONA_KEY)
        listed = [
            {
                "id": self.base_id,
                "object": "model",
                "created": self.started,
                "owned_by": OWNER,
                "description": "the base model without a persona",
                "persona": None,
                "version": None,
                "default": False,
            }
        ]
        for info in self.library.list_personas():
            if not self._fits(info.fingerprint, info.hidden_size):
                continue
            if info.kind == "deep" and self.layout is None:  # this backend cannot run it
                continue
            listed.append(
                {
                    "id": info.name,
                    "object": "model",
                    "created": int(info.created.timestamp()),
                    "owned_by": OWNER,
                    "description": info.description,
                    "persona": info.name,
                    "version": info.active_version,
                    "default": info.name == default,
                }
            )
        return listed

    def entry(self, model: str, prompt: SoftPrompt | None) -> dict[str, Any]:
        """The model object of an id `models()` does not list (a version: `hamlet@2`)."""
        return {
            "id": model,
            "object": "model",
            "created": self.started,
            "owned_by": OWNER,
            "description": prompt.description if prompt is not None else "",
            "persona": prompt.name if prompt is not None else None,
        }

    def resolve_with_defaults(self, model: str) -> tuple[SoftPrompt | None, PersonaDefaults]:
        """`resolve`, and the persona's own defaults (`persona set`; none for the bare model)."""
        prompt = self.resolve(model)
        if prompt is None:
            return None, PersonaDefaults()
        try:
            return prompt, self.library.get_defaults(prompt.name)
        except NotFoundError:  # renamed or deleted since: its prompt is still good
            return prompt, PersonaDefaults()
        except LibraryError as exc:
            raise APIError(503, str(exc), code="library_unavailable") from None

    def resolve(self, model: str) -> SoftPrompt | None:
        """The soft prompt a request's `model` names (None: the bare model), checked against the
        loaded model; a name no persona has is a 404 `model_not_found`."""
        try:
            try:
                prompt = self.library.get_prompt(model)
            except NotFoundError:
                if model == self.base_id:
                    return None
                versioned = _VERSIONED.match(model)
                if versioned is None:
                    raise
                prompt = self.library.get_prompt(versioned["name"], int(versioned["version"]))
            check_runs(prompt, self.fingerprint, self.layout, self.backend)
        except NotFoundError as exc:
            raise APIError(
                404,
                f"{exc}; GET /v1/models lists the models served here",
                param="model",
                code="model_not_found",
            ) from None
        except PromptMismatchError as exc:
            raise APIError(400, str(exc), param="model", code="model_not_compatible") from None
        except LibraryError as exc:
            raise APIError(503, str(exc), code="library_unavailable") from None
        except PersonaError as exc:
            raise APIError(500, str(exc), code="library_error") from None
        return prompt

    def _fits(self, fingerprint: str, hidden_size: int) -> bool:
        if fingerprint:
            return fingerprint == str(self.fingerprint)
        return hidden_size == self.fingerprint.hidden_size
