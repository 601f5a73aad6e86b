"""Every Python code block in README.md and docs/ runs as written, in page order.

The pages are parsed with Sybil (MyST flavour): a ``python`` block is run, and
one that starts with ``>>>`` is a doctest whose output must match. Each page
runs in a fresh working directory with one namespace for all its blocks, as a
reader pasting them in order into one interpreter would. A block that cannot
run here (it needs servers the page names, or it is a fragment) is marked
right above it with ``<!-- skip: next "why" -->``; the markers are counted, so
the number of skipped blocks stays small. Pages that say they run on MariaDB
run on the test server (and fail, not skip, under ``CI=true`` without one).
"""

from __future__ import annotations

import re
import secrets
import unittest
from collections.abc import Iterator
from pathlib import Path

import pytest
from sybil import Sybil
from sybil.example import NotEvaluated
from sybil.parsers.myst import PythonCodeBlockParser, SkipParser

from tests.support import docshell
from tests.support.docshell import FileBlockParser, ShellBlockParser, skip_markers
from tests.support.mysql import ServerAddress

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
PAGES = [p for p in PAGES if "_build" not in p.parts]

MARIADB_PAGES = {
    # page: the databases it asks the reader to create (or creates) on the local server
    "docs/tutorials/write-and-read-aggregates.md": ("tutorial0", "tutorial1", "tutorial2"),
    "docs/tutorials/demo-to-mariadb.md": (
        *(f"demo{i}" for i in range(5)),
        *(f"billing{i}" for i in range(3)),
    ),
}
RULE_PACKAGE_PAGES = {"docs/howto/write-a-billing-rule.md"}
SKIP_BUDGET = 8
"""At most this many blocks are skipped over all pages (each needs a reason)."""

SHELL_SKIP_BUDGET = 10
"""At most this many shell blocks with ``shardbill`` commands are not run (each says why)."""

SYBIL = Sybil(
    parsers=[PythonCodeBlockParser(), ShellBlockParser(), FileBlockParser(), SkipParser()]
)
_FENCE = re.compile(r"^\s*(```+|~~~+)(.*)$")
_SKIP = re.compile(r"<!-- skip: (next|start)(.*?)-->")


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def _run(page: Path) -> int:
    """Run every example of ``page``; returns how many actually ran."""
    ran = 0
    for example in SYBIL.parse(page):
        try:
            example.evaluate()
        except (unittest.SkipTest, NotEvaluated):
            continue
        ran += 1
    return ran


SLOW_PAGES = {
    "docs/howto/add-a-shard.md",  # a real reshard of 4096 slots on SQLite
    "docs/tutorials/first-run.md",  # `./run demo`: the full demo, about a minute
    "docs/tutorials/demo-to-mariadb.md",  # the demo on SQLite and on MariaDB, a few minutes
}


@pytest.mark.parametrize(
    "page",
    [
        pytest.param(p, marks=[pytest.mark.slow] if _name(p) in SLOW_PAGES else [])
        for p in PAGES
        if _name(p) not in MARIADB_PAGES.keys() | RULE_PACKAGE_PAGES
    ],
    ids=_name,
)
def test_page_code_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The page's Python blocks run in order, in a fresh directory, and their outputs hold."""
    monkeypatch.chdir(tmp_path)
    _run(page)


@pytest.mark.usefixtures("installed_example")
@pytest.mark.parametrize("page", sorted(RULE_PACKAGE_PAGES))
def test_rule_package_page_runs(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the example rule package installed (as the page says), the page's code runs."""
    monkeypatch.chdir(tmp_path)
    assert _run(ROOT / page) >= 2


@pytest.fixture
def page_databases(
    mysql_server: ServerAddress, request: pytest.FixtureRequest
) -> Iterator[tuple[str, dict[str, str]]]:
    """The databases a MariaDB page asks for, under names unique to this run, dropped after.

    Yields the page's name and the page's database names mapped to the real
    ones, so that runs sharing the server (several worktrees, ``-n``) never
    drop each other's databases. The page creates them itself, as the
    reader does (its ``mariadb -e "CREATE DATABASE ..."`` runs, or
    ``shardbill demo --mysql`` creates them).
    """
    page: str = request.param
    token = secrets.token_hex(4)
    names = {name: f"{name}_{token}" for name in MARIADB_PAGES[page]}
    conn = mysql_server.connect()
    try:
        yield page, names
    finally:
        with conn.cursor() as cur:  # type: ignore[attr-defined]
            for name in names.values():
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "page_databases",
    [
        pytest.param(p, marks=[pytest.mark.slow] if p in SLOW_PAGES else [])
        for p in sorted(MARIADB_PAGES)
    ],
    indirect=True,
)
def test_mariadb_page_runs(
    page_databases: tuple[str, dict[str, str]],
    mysql_server: ServerAddress,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A page that runs on the local MariaDB server does, on the test server."""
    page, names = page_databases
    text = (ROOT / page).read_text(encoding="utf-8")
    auth = mysql_server.user + (f":{mysql_server.password}" if mysql_server.password else "")
    text = text.replace("root@127.0.0.1:3306", f"{auth}@{mysql_server.host}:{mysql_server.port}")

    def suffixed(match: re.Match[str]) -> str:  # demo{0,1} -> demo{0,1}_<token>: demo0_<token>
        expanded = [match.group(1) + choice for choice in match.group(2).split(",")]
        if not all(name in names for name in expanded):
            return match.group(0)
        suffixes = {names[name][len(name) :] for name in expanded}
        assert len(suffixes) == 1, suffixes
        return match.group(0) + suffixes.pop()

    text = re.sub(r"\b(\w+)\{([\w,]+)\}", suffixed, text)
    for name, unique in names.items():
        assert re.search(rf"\b{name}\b", text), f"{page} no longer names database {name}"
        text = re.sub(rf"\b{name}\b", unique, text)
    copy = tmp_path / Path(page).name
    copy.write_text(text, encoding="utf-8")
    monkeypatch.chdir(tmp_path)

    def sql(database: str | None, statements: str) -> None:
        """The page's ``mariadb -e``, on the test server (one statement at a time)."""
        conn = mysql_server.connect(database) if database else mysql_server.connect()
        try:
            with conn.cursor() as cur:  # type: ignore[attr-defined]
                for statement in filter(None, (s.strip() for s in statements.split(";"))):
                    cur.execute(statement)
            conn.commit()  # type: ignore[attr-defined]
        finally:
            conn.close()  # type: ignore[attr-defined]

    monkeypatch.setattr(docshell, "SQL_RUNNER", sql)
    assert _run(copy) >= 5


def test_skipped_blocks_are_few_and_say_why() -> None:
    """Every skip marker gives its reason, and there are at most SKIP_BUDGET of them."""
    skips: list[str] = []
    for page in PAGES:
        for match in _SKIP.finditer(page.read_text(encoding="utf-8")):
            assert match.group(1) == "next", f"{_name(page)}: use 'skip: next' per block"
            assert re.fullmatch(r'\s*"[^"]{10,}"\s*', match.group(2)), (
                f'{_name(page)}: a skip marker needs a reason: <!-- skip: next "why" -->'
            )
            skips.append(f"{_name(page)}: {match.group(2).strip()}")
    assert len(skips) <= SKIP_BUDGET, "\n".join(skips)


def test_shell_skips_are_few_and_say_why() -> None:
    """Every shell skip marker gives its reason; pages and blocks skipped stay within budget."""
    skips: list[str] = []
    for page in PAGES:
        for kind, reason in skip_markers(page.read_text(encoding="utf-8")):
            assert re.fullmatch(r'"[^"]{10,}"', reason), (
                f'{_name(page)}: a shell skip marker needs a reason: <!-- shell: {kind} "why" -->'
            )
            skips.append(f"{_name(page)} ({kind}): {reason}")
    assert len(skips) <= SHELL_SKIP_BUDGET, "\n".join(skips)


def test_every_code_block_names_its_language() -> None:
    """No fenced block is untagged, so no Python block can hide from the tests above."""
    untagged = []
    for page in PAGES:
        inside: str | None = None
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            match = _FENCE.match(line)
            if match is None:
                continue
            if inside is None:
                inside = match.group(1)
                if not match.group(2).strip():
                    untagged.append(f"{_name(page)}:{number}")
            elif match.group(1).startswith(inside) and not match.group(2).strip():
                inside = None
    assert untagged == [], "tag these blocks (text, console, python, toml, ...)"
