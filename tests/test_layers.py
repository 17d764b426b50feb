"""Which part of persona may import which (docs/architecture.md): a new upward import fails here.

The parts are the top-level modules and packages of persona/; every import counts, at module level
or inside a function (TYPE_CHECKING imports never run and are left out).
"""

from __future__ import annotations

from tests.import_graph import import_graph

# part -> the parts it may import (besides itself); bottom to top, as docs/architecture.md draws it
MAY_IMPORT: dict[str, set[str]] = {
    "errors": set(),
    # runs inside vLLM's process and environment: nothing of persona but itself
    "kvconnector": set(),
    "paths": {"errors"},
    "model": {"errors", "paths"},
    "prompt": {"errors", "paths", "model"},
    "dialogue": {"errors", "paths", "prompt"},
    "starters": {"errors", "paths", "model", "prompt", "persona"},
    # a persona's sampling defaults are stored as the engine's GenerationConfig validates them
    "library": {"errors", "paths", "model", "prompt", "starters", "persona", "engine"},
    "formats": {"errors", "paths", "model", "prompt", "engine"},
    # the gateway shares the connector's file format and names (facts in one place)
    "engine": {"errors", "paths", "model", "prompt", "kvconnector"},
    "doctor": {"errors", "paths", "model", "prompt", "library"},
    "style": {"errors", "paths", "model", "prompt", "dialogue", "engine"},
    "train": {
        "errors",
        "paths",
        "model",
        "prompt",
        "dialogue",
        "library",
        "formats",
        "engine",
        "style",
    },
    "serve": {"errors", "paths", "model", "prompt", "library", "engine"},
    "tui": {"errors", "paths", "model", "prompt", "library", "engine"},
}


def part(module: str) -> str:
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "persona"


def test_every_part_imports_only_the_parts_below_it():
    upward = []
    for module, targets in import_graph().items():
        allowed = MAY_IMPORT.get(part(module))
        if allowed is None:  # the command line and the package itself sit on top
            continue
        for target in sorted(targets):
            if part(target) != part(module) and part(target) not in allowed:
                upward.append(f"{module} imports {target}")
    assert not upward, "imports against the layers of docs/architecture.md:\n" + "\n".join(upward)
