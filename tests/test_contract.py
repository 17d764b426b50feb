"""Every implementation of the two roles meets its protocol: each runner the generation contract
(persona.engine.contract.Runner), each backend the backend contract (persona.engine.backend.Backend).

The type checker checks the same in `make test`; this test also fails where an implementation
renames a parameter or leaves out a member, which a structural check at run time would not see.
"""

from __future__ import annotations

import inspect

import pytest

from persona.engine.backend import Backend
from persona.engine.contract import Runner
from persona.engine.llamacpp_backend import LlamaCppBackend
from persona.engine.scheduler import Scheduler
from persona.engine.serial import SerialRunner
from persona.engine.torch_backend import NativeBackend, TransformersBackend
from persona.engine.vllm.gateway import VllmRunner
from persona.engine.vllm.model import EmbeddingBackend


def members(protocol: type) -> tuple[dict[str, inspect.Signature], set[str]]:
    """The protocol's methods with their signatures, and its attributes."""
    methods = {
        name: inspect.signature(value)
        for name, value in vars(protocol).items()
        if callable(value) and not name.startswith("_")
    }
    return methods, set(getattr(protocol, "__annotations__", {}))


def check(implementation: type, protocol: type) -> None:
    methods, attributes = members(protocol)
    for name, wanted in methods.items():
        assert hasattr(implementation, name), f"{implementation.__name__} has no {name}()"
        given = inspect.signature(getattr(implementation, name))
        assert list(given.parameters) == list(wanted.parameters), (
            f"{implementation.__name__}.{name}{given} is not {protocol.__name__}.{name}{wanted}"
        )
        for parameter in wanted.parameters.values():
            assert given.parameters[parameter.name].kind == parameter.kind
    source = "".join(inspect.getsource(cls) for cls in implementation.__mro__[:-1])
    for attribute in attributes:  # set on the class or in __init__
        assert hasattr(implementation, attribute) or f"self.{attribute} =" in source, (
            f"{implementation.__name__} sets no {attribute}"
        )


@pytest.mark.parametrize("runner", [Scheduler, SerialRunner, VllmRunner])
def test_each_runner_meets_the_generation_contract(runner):
    check(runner, Runner)


@pytest.mark.parametrize(
    "backend", [NativeBackend, TransformersBackend, LlamaCppBackend, EmbeddingBackend]
)
def test_each_backend_meets_the_backend_contract(backend):
    check(backend, Backend)


def test_the_check_sees_a_renamed_parameter():
    class Drifted:
        name = "drifted"
        layout = None

        def submit(self, job, sink, cancelled=None): ...

        def metrics(self): ...

        def close(self): ...

    with pytest.raises(AssertionError, match="submit"):
        check(Drifted, Runner)
