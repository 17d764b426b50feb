"""Layers import downward only: no two persona modules may import each other, even through a chain.

Every import counts, at module level or inside a function (an import placed in a function to dodge
a cycle is still a cycle); only imports under `if TYPE_CHECKING:` are left out, since they never
run. A package's `__init__` that re-exports its submodules is no cycle by itself: importing
`persona.x.y` is an edge to `persona.x.y`, not to the package `persona.x`, unless a name is taken
from the package itself.
"""

from __future__ import annotations

import ast

from tests.import_graph import import_graph, import_statements


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively: the components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
    return components


def a_cycle(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One cycle through the component's first module, as a path that returns to it."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(graph[node] & members):
            if child == start:
                return [*paths[node], start]
            if child not in paths:
                paths[child] = [*paths[node], child]
                queue.append(child)
    return component


def test_no_import_cycles() -> None:
    graph = import_graph()
    cycles = [" -> ".join(a_cycle(c, graph)) for c in strongly_connected(graph)]
    assert not cycles, "import cycles among persona modules:\n" + "\n".join(cycles)


def test_the_graph_sees_imports_inside_functions_and_relative_ones() -> None:
    """The checker itself: an import inside a function and a `from . import x` are edges."""
    graph = import_graph()
    assert graph, "no modules found under persona/"
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import hidden\n"
        "def f():\n    import inner\n    from . import sibling\n"
    )
    names = [
        alias.name if isinstance(node, ast.Import) else f"{node.level}:{alias.name}"
        for node in import_statements(tree)
        for alias in node.names
    ]
    assert names == ["0:TYPE_CHECKING", "inner", "1:sibling"]


def test_strongly_connected_finds_a_cycle_of_three() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    (component,) = strongly_connected(graph)
    assert component == ["a", "b", "c"]
    assert a_cycle(component, graph) == ["a", "b", "c", "a"]
