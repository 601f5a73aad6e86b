"""The package's layers, checked from the imports (issue 18).

The architecture page (docs/explanation/architecture.md) draws these
layers; this test keeps the drawing true. It reads every module of
``src/shardbill`` with :mod:`ast` (nothing is imported), collects the
``shardbill`` modules each one imports (module level and inside functions;
``if TYPE_CHECKING:`` blocks are left out, they never run), and checks:

1. the pure core imports only the pure core (plus :mod:`shardbill.errors`);
2. no import cycle among module-level imports;
3. no module imports from a higher layer.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "shardbill"

PURE = ("shardbill.keys", "shardbill.shardmap", "shardbill.money", "shardbill.rules")
"""The pure core: no I/O, and nothing imported that does I/O."""
PURE_MAY_ALSO_IMPORT = ("shardbill.errors", "shardbill._version", "shardbill._parsing")

LAYERS: tuple[tuple[str, ...], ...] = (
    ("shardbill.cli", "shardbill.__main__"),
    ("shardbill.workloads",),
)
"""Top layers, highest first: nothing below a layer may import it."""


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(tree: ast.AST, *, top_level_only: bool) -> set[str]:
    """The shardbill modules a module's code imports."""
    found: set[str] = set()

    def visit(node: ast.AST, depth: int) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub, depth)
                continue
            inner = depth + isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if top_level_only and inner:
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.startswith("shardbill"))
            elif isinstance(child, ast.ImportFrom) and (child.module or "").startswith("shardbill"):
                assert child.module is not None
                found.add(child.module)
                found.update(f"{child.module}.{a.name}" for a in child.names)
            visit(child, inner)

    visit(tree, 0)
    return found


def graph(*, top_level_only: bool) -> dict[str, set[str]]:
    """Module -> the shardbill modules it imports (names that are not modules dropped)."""
    trees = {module_name(p): ast.parse(p.read_text(encoding="utf-8")) for p in SRC.rglob("*.py")}
    return {
        name: {m for m in imports_of(tree, top_level_only=top_level_only) if m in trees} - {name}
        for name, tree in trees.items()
    }


def _within(module: str, prefixes: Iterable[str]) -> bool:
    # ``shardbill.cli_x`` modules (until they move into ``cli/``) belong to ``shardbill.cli``.
    return any(
        module == p
        or module.startswith(p + ".")
        or (p == "shardbill.cli" and module.startswith("shardbill.cli_"))
        for p in prefixes
    )


def impure_imports(edges: Mapping[str, set[str]]) -> list[str]:
    allowed = PURE + PURE_MAY_ALSO_IMPORT
    return sorted(
        f"{src} imports {dst}"
        for src, dsts in edges.items()
        if _within(src, PURE)
        for dst in dsts
        if dst != "shardbill" and not _within(dst, allowed)
    )


def upward_imports(edges: Mapping[str, set[str]]) -> list[str]:
    problems = []
    for rank, layer in enumerate(LAYERS):
        above = [m for higher in LAYERS[: rank + 1] for m in higher]
        for src, dsts in edges.items():
            if _within(src, above) or (src == "shardbill" and layer != LAYERS[0]):
                # the root package re-exports the public names (Traffic among them)
                continue
            problems += [f"{src} imports {dst}" for dst in sorted(dsts) if _within(dst, layer)]
    return sorted(problems)


def cycles(edges: Mapping[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return found


def _package_edges(edges: Mapping[str, set[str]]) -> dict[str, set[str]]:
    # A package's __init__ re-exporting its own modules is not a cycle of the design.
    return {src: {d for d in dsts if not d.startswith(src + ".")} for src, dsts in edges.items()}


def test_the_pure_core_imports_nothing_that_does_io() -> None:
    """keys, shardmap, money and rules import only each other and the error tree."""
    assert impure_imports(graph(top_level_only=False)) == []


def test_no_module_imports_a_higher_layer() -> None:
    """The command line and the workloads sit on top: the library never imports them."""
    assert upward_imports(graph(top_level_only=False)) == []


def test_module_level_imports_have_no_cycle() -> None:
    """Module-level imports form no cycle, so any module can be imported first."""
    assert cycles(_package_edges(graph(top_level_only=True))) == []


@pytest.mark.parametrize(
    ("edges", "check"),
    [
        ({"shardbill.money": {"shardbill.providers.pool"}}, impure_imports),
        ({"shardbill.rules.engine": {"shardbill.writer"}}, impure_imports),
        ({"shardbill.writer": {"shardbill.cli.main"}}, upward_imports),
        ({"shardbill.pipeline": {"shardbill.workloads.demo"}}, upward_imports),
        ({"shardbill": {"shardbill.cli_demo"}}, upward_imports),
        ({"shardbill.a": {"shardbill.b"}, "shardbill.b": {"shardbill.a"}}, cycles),
    ],
)
def test_the_checks_catch_a_bad_import(edges: dict[str, set[str]], check: object) -> None:
    """A test of the test: each check reports a deliberately bad import graph."""
    assert callable(check)
    assert check(edges) != []


def test_the_command_line_may_import_the_workloads() -> None:
    """Downward imports pass: the command line runs the demo."""
    assert upward_imports({"shardbill.cli_demo": {"shardbill.workloads.demo"}}) == []


def test_the_real_graph_is_read() -> None:
    """The graph is not empty by accident: the writer is seen importing the shard map."""
    edges = graph(top_level_only=True)
    assert "shardbill.shardmap" in edges["shardbill.writer"]
    assert "shardbill.workloads.demo" in edges
