"""Fixtures for the chat client: a real library in the test's data dir, the tiny model's engine."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from persona.prompt.softprompt import SoftPrompt


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run `async def` tests (Pilot drives the app from a coroutine) on a fresh asyncio loop."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    asyncio.run(pyfuncitem.obj(**{name: pyfuncitem.funcargs[name] for name in names}))
    return True


def make_prompt(tiny: Any, name: str, description: str, seed: int) -> SoftPrompt:
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(4, tiny.fingerprint.hidden_size, generator=generator) * 0.5  # (4, D)
    return SoftPrompt(
        embeddings=embeddings, name=name, description=description, fingerprint=tiny.fingerprint
    )


@pytest.fixture
def library() -> Iterator[Any]:
    """An empty library in the test's own PERSONA_HOME."""
    from persona.library import open_library

    lib = open_library()
    yield lib
    lib.close()


@pytest.fixture
def two_personas(library: Any, tiny: Any) -> Any:
    """`pirate` and `poet`, two soft prompts that fit the tiny model."""
    library.add_version("pirate", make_prompt(tiny, "pirate", "speaks like an old sea dog", 1))
    library.add_version("poet", make_prompt(tiny, "poet", "answers in rhyme", 2))
    return library


@pytest.fixture
def engine(tiny: Any) -> Any:
    from persona.engine.chat import ChatEngine

    return ChatEngine(tiny)
