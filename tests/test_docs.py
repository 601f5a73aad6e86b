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

import argparse
import contextlib
import gc
import io
import re
import secrets
import shlex
import time
import unittest
from collections.abc import Iterator
from pathlib import Path

import pytest
from sybil import Document, Sybil
from sybil.example import NotEvaluated
from sybil.parsers.myst import PythonCodeBlockParser, SkipParser

from shardbill.cli import _build_parser
from tests.support import docshell
from tests.support.docshell import FileBlockParser, ShellBlockParser, skip_markers
from tests.support.kafka import KafkaBroker
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
KAFKA_PAGES = {"docs/tutorials/stream-worker.md"}
"""Pages that run on the private Kafka broker (``test_stream_worker_tutorial_runs_on_kafka``)."""
SKIP_BUDGET = 7
"""At most this many blocks are skipped over all pages (each needs a reason)."""

SHELL_SKIP_BUDGET = 9
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
    return _evaluate(SYBIL.parse(page))


def _evaluate(document: Document) -> int:
    """Run every example of ``document``; returns how many actually ran."""
    ran = 0
    for example in document:
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
        if _name(p) not in MARIADB_PAGES.keys() | RULE_PACKAGE_PAGES | KAFKA_PAGES
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


PAGE_BROKER = "127.0.0.1:9092"
"""The broker address the stream-worker tutorial shows."""


@pytest.mark.kafka
def test_stream_worker_tutorial_runs_on_kafka(
    kafka_broker: KafkaBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/tutorials/stream-worker.md runs whole, its Kafka section on the private broker.

    The page runs from a copy in which its broker address, the exact string
    ``127.0.0.1:9092``, is replaced by the session broker's (a free port: a
    fixed 9092 could be taken, or shared with another run of the suite on
    this machine). Sections 1 to 3 run as on any page; section 4's worker
    command (a ``background`` block) starts as a process in the page's
    directory, with ``--kafka-option session.timeout.ms=6000`` appended, which
    the page does not show: with librdkafka's default of 45 s, Tansu's first
    assignment of the group takes about 25 s instead of 3 (tests/support/kafka.py).
    Then the page's producer block sends its event; the test waits until the
    event is in the shard, read through shardbill's Reader as the page's
    section 2 does, and stops the worker with SIGINT (Ctrl-C), which must
    exit 0.
    """
    from shardbill import Reader
    from shardbill.config import Config

    page = "docs/tutorials/stream-worker.md"
    text = (ROOT / page).read_text(encoding="utf-8")
    assert text.count(PAGE_BROKER) >= 2, f"{page} no longer shows the broker {PAGE_BROKER}"
    copy = tmp_path / Path(page).name
    copy.write_text(text.replace(PAGE_BROKER, kafka_broker.bootstrap), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    document = SYBIL.parse(copy)
    with docshell.background(extra_args=["--kafka-option", "session.timeout.ms=6000"]) as started:
        assert _evaluate(document) >= 10
        document.namespace.clear()  # the page's Producer is closed now, while the broker runs
        gc.collect()
        assert [c.line.split()[:2] for c in started] == [["shardbill", "worker"]]
        config = Config.load(tmp_path / "shardbill.toml")
        opened = config.open()
        try:
            reader = Reader(
                shard_map=opened.map_store.load(), provider=opened.provider, tables=config.tables
            )
            charges: object = None
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                charges = reader.rows("account_balance", 42)[0].measures["charges"]
                if charges == 5 or started[0].process.poll() is not None:
                    break
                time.sleep(0.2)
        finally:
            opened.close()
        assert charges == 5, (
            f"account 42 has {charges} charges, not 5: the Kafka event evt-9 is not in the "
            "shards within 90 s of the page's producer block; the worker printed:\n"
            + started[0].printed()
        )
    # leaving the block sent the worker SIGINT; it exited 0 (docshell.background checks)


def _exact(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``parser`` and its subcommands' parsers refusing abbreviated options.

    The command line accepts ``--bootstrap-server`` for ``--bootstrap-servers``
    while no other option starts so; a page must name the option itself.
    """
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _exact(sub)
    return parser


def _parse_error(line: str) -> str | None:
    """Why ``shardbill``'s real argument parser refuses the command ``line``, or None."""
    argv = docshell._argv(line)
    assert argv is not None, line
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            _exact(_build_parser()).parse_args(argv)
    except SystemExit as exc:  # --help and --version exit 0; a usage error exits 2
        if exc.code not in (0, None):
            return out.getvalue().strip() or f"exit {exc.code}"
    return None


def _exempt_pages() -> list[str]:
    """The pages with shell blocks that are not run."""
    return [_name(p) for p in PAGES if any(skip_markers(p.read_text(encoding="utf-8")))]


@pytest.mark.parametrize("page", _exempt_pages())
def test_exempt_shardbill_commands_parse(page: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shell blocks that are not run (``shell: skip``, ``shell: skip-page``) do not go stale.

    Every ``shardbill`` command line of them (``\\`` continuations joined) is
    parsed, not run, by the real parser of :mod:`shardbill.cli`: a subcommand
    or an option that does not exist (abbreviations refused), or a value its
    type refuses, fails.
    An ``env:NAME`` value is read at parse time, so NAME is set to a
    placeholder first. Any other command in such a block (``pip install``,
    ``kafka-topics``) needs ``<!-- shell: not-shardbill "why" -->`` above the
    block, and that marker only where the block has one.
    """
    problems: list[str] = []
    checked = 0
    for line, block in docshell.shell_blocks(ROOT / page):
        if block.skipped is None:
            continue  # it runs in test_page_code_runs (or a page test of its own)
        others = []
        for command in docshell.commands(block.source):
            if docshell._argv(command.line) is None:
                others.append(command.line)
                continue
            for word in shlex.split(command.line, comments=True):
                for name in re.findall(r"(?:^|=)env:(\w+)$", word):
                    monkeypatch.setenv(name, "placeholder")
            checked += 1
            error = _parse_error(command.line)
            if error is not None:
                problems.append(f"{page}:{line}: $ {command.line}\n{error}")
        exempt = block.markers.get("not-shardbill")
        if others and exempt is None:
            problems.append(
                f"{page}:{line}: not shardbill commands, so not checked: {others}; mark the "
                'block <!-- shell: not-shardbill "why" --> or show shardbill commands only'
            )
        if exempt is not None and not others:
            problems.append(f"{page}:{line}: a not-shardbill marker on a block of shardbill only")
        if exempt is not None and not re.fullmatch(r'"[^"]{10,}"', exempt):
            problems.append(f'{page}:{line}: not-shardbill needs a reason: "why"')
    assert problems == [], "\n\n".join(problems)
    assert checked > 0, f"{page}: no shardbill command in its blocks that are not run"


def test_shell_markers_are_known() -> None:
    """Every ``<!-- shell: ... -->`` marker is one the runner knows (a typo is not ignored)."""
    known = {*docshell.BLOCK_MARKERS, "skip-page"}
    unknown = [
        f"{_name(page)}: {kind}"
        for page in PAGES
        for kind, _ in docshell.shell_markers(page.read_text(encoding="utf-8"))
        if kind not in known
    ]
    assert unknown == []


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
