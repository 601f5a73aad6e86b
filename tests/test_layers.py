"""The package's layers, checked from the imports (issue 18).

The architecture page (docs/explanation/architecture.md) draws these
layers; this test keeps the drawing true. It reads every module of
``src/shardbill`` with :mod:`ast` (nothing is imported), collects the
``shardbill`` modules each one imports (module level and inside functions;
``if TYPE_CHECKING:`` blocks are left out, they never run), and checks:

0. every module has a level in :data:`LEVELS`;
1. the pure core imports only the pure core and the bottom level (the error
   tree, the interfaces, the observer vocabulary);
2. no import cycle among module-level imports;
3. no module imports from a higher level.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "shardbill"

LEVELS: tuple[tuple[str, ...], ...] = (
    ("shardbill.cli", "shardbill.__main__"),
    ("shardbill.workloads",),
    ("shardbill.config",),
    ("shardbill.worker", "shardbill.ingest"),
    (
        "shardbill.status",
        "shardbill.repair",
        "shardbill.migrate",
        "shardbill.audit",
        "shardbill.statements",
    ),
    ("shardbill.pipeline", "shardbill.resharding", "shardbill.corrections"),
    ("shardbill.writer", "shardbill.reader", "shardbill.metrics"),
    ("shardbill.periods", "shardbill.declarations.store"),
    ("shardbill.mapstore",),
    ("shardbill.providers",),
    ("shardbill.dialects",),
    (
        "shardbill.tables",
        "shardbill.rules",
        "shardbill.shardmap",
        "shardbill.keys",
        "shardbill.money",
        "shardbill.retry",
        "shardbill.writer.planning",
        "shardbill.writer.extraction",
        "shardbill.writer.fingerprints",
        "shardbill.writer.results",
        "shardbill.corrections.records",
        "shardbill.declarations",
    ),
    (
        "shardbill.protocols",
        "shardbill.observe",
        "shardbill.errors",
        "shardbill._version",
        "shardbill._parsing",
    ),
)
"""The layers, highest first; a module belongs to the level of its longest prefix here.
A module imports only from its own level or lower ones."""

PURE = LEVELS[-2]
"""The pure core: no I/O, and nothing imported that does I/O."""
PURE_MAY_ALSO_IMPORT = LEVELS[-1]
"""The bottom: the error tree, the interfaces (typing only), the observer vocabulary."""


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


def level_of(module: str) -> int | None:
    """The index in :data:`LEVELS` of ``module``'s level (its longest matching prefix)."""
    best: tuple[int, int] | None = None
    for rank, level in enumerate(LEVELS):
        for prefix in level:
            if (module == prefix or module.startswith(prefix + ".")) and (
                best is None or len(prefix) > best[1]
            ):
                best = (rank, len(prefix))
    return None if best is None else best[0]


def impure_imports(edges: Mapping[str, set[str]]) -> list[str]:
    pure = len(LEVELS) - 2
    return sorted(
        f"{src} imports {dst}"
        for src, dsts in edges.items()
        if level_of(src) == pure
        for dst in dsts
        if dst != "shardbill" and (level_of(dst) or 0) < pure
    )


def upward_imports(edges: Mapping[str, set[str]]) -> list[str]:
    problems = []
    for src, dsts in edges.items():
        # The root package re-exports the public names from every level (Traffic among
        # them), but never the command line's.
        rank = 1 if src == "shardbill" else level_of(src)
        for dst in sorted(dsts):
            target = level_of(dst)
            if rank is not None and target is not None and target < rank:
                problems.append(f"{src} imports {dst} (a higher level)")
    return sorted(problems)


def unplaced(edges: Mapping[str, set[str]]) -> list[str]:
    return sorted(m for m in edges if m != "shardbill" and level_of(m) is None)


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


def test_every_module_has_a_level() -> None:
    """A new module is placed in LEVELS (and on the architecture page) when it is added."""
    assert unplaced(graph(top_level_only=False)) == []


def test_the_pure_core_imports_nothing_that_does_io() -> None:
    """The pure level (keys, shardmap, money, rules, tables, the writer's planning) imports
    only itself and the bottom level."""
    assert impure_imports(graph(top_level_only=False)) == []


def test_no_module_imports_a_higher_layer() -> None:
    """Imports only go down the levels: the command line and the programs on top, the
    writer above the providers above the dialects above the pure core."""
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
        ({"shardbill.dialects.detect": {"shardbill.providers.pool"}}, upward_imports),
        ({"shardbill.tables.aggregates": {"shardbill.dialects.base"}}, impure_imports),
        ({"shardbill.newthing": set()}, unplaced),
        ({"shardbill.pipeline": {"shardbill.workloads.demo"}}, upward_imports),
        ({"shardbill": {"shardbill.cli.demo"}}, upward_imports),
        ({"shardbill.a": {"shardbill.b"}, "shardbill.b": {"shardbill.a"}}, cycles),
    ],
)
def test_the_checks_catch_a_bad_import(edges: dict[str, set[str]], check: object) -> None:
    """A test of the test: each check reports a deliberately bad import graph."""
    assert callable(check)
    assert check(edges) != []


def test_the_command_line_may_import_the_workloads() -> None:
    """Downward imports pass: the command line runs the demo."""
    assert upward_imports({"shardbill.cli.demo": {"shardbill.workloads.demo"}}) == []


def test_the_real_graph_is_read() -> None:
    """The graph is not empty by accident: the writer is seen importing the shard map."""
    edges = graph(top_level_only=True)
    assert "shardbill.shardmap" in edges["shardbill.writer.aggregation"]
    assert "shardbill.workloads.demo" in edges
