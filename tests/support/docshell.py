"""Run the ``shardbill`` commands that the docs' shell blocks show, and check their output.

A ``console``, ``bash`` or ``shell`` block is read as a terminal session: a
line starting with ``$ `` is a command (a trailing ``\\`` continues it), the
lines after it up to the next command are what it printed. A block without
``$`` prompts is a script: every line is a command, none shows output.

Only ``shardbill`` commands run (also spelled ``.venv/bin/shardbill`` or
``python -m shardbill``), in-process through :func:`shardbill.cli.main`, in
the page's working directory, after the page's earlier Python blocks. Other
commands a reader needs for the setup (``pip install``, ``./run ...``) are
not run; ``echo $?`` prints the exit code of the command before it. Any
other command in a block with a ``shardbill`` command fails the test: such a
block must be marked right above it with ``<!-- shell: skip "why" -->``, and
a page whose commands need a server the test does not start (MariaDB, a
Kafka broker) with ``<!-- shell: skip-page "why" -->`` anywhere in it.

Shown output is compared line by line after :func:`normalize`: a line
``...`` stands for any number of lines, ``...`` inside a line for any text,
``<word>`` for one token, and timings and rates (a number followed by
``s``, ``ms`` or ``/s``) are volatile. A command that exits non-zero fails
the test unless an ``echo $?`` after it shows that code.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import unittest
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from sybil import Document, Example, Region
from sybil.parsers.myst import CodeBlockParser

from shardbill.cli import main

LANGUAGES = ("console", "bash", "shell")
SKIP_MARKER = re.compile(r"^<!-- shell: skip\s*(.*?)\s*-->\s*\Z", re.MULTILINE)
PAGE_SKIP_MARKER = re.compile(r"^<!-- shell: skip-page\s*(.*?)\s*-->$", re.MULTILINE)
_PROGRAMS = (("shardbill",), (".venv/bin/shardbill",), ("python", "-m", "shardbill"))
_ALIASES = {("./run", "demo"): ["demo"]}  # README: `./run demo` is `shardbill demo`
_NOT_RUN = (("pip", "install"), ("./run",))
_VOLATILE = re.compile(r"\d[\d,]*(?:\.\d+)?(?= ?(?:s|ms|[a-z]*/s)\b)")
_PLACEHOLDER = re.compile(r"<[A-Za-z][\w-]*>")


@dataclass
class Command:
    """One command of a block, with the output the page shows for it (maybe none)."""

    line: str
    shown: list[str] = field(default_factory=list)


def commands(source: str) -> list[Command]:
    """The commands of one shell block, in order."""
    lines = source.splitlines()
    prompted = any(line.startswith("$ ") for line in lines)
    result: list[Command] = []
    continued = False
    for line in lines:
        if continued:
            result[-1].line += " " + line.strip()
        elif not prompted:
            if line.strip() and not line.lstrip().startswith("#"):
                result.append(Command(line.strip()))
        elif line.startswith("$ "):
            result.append(Command(line[2:].strip()))
        elif result:
            result[-1].shown.append(line)
        continued = result[-1].line.endswith("\\") if result else False
        if continued:
            result[-1].line = result[-1].line[:-1].rstrip()
    return result


def _argv(command: str) -> list[str] | None:
    """The CLI arguments when ``command`` runs shardbill, else None."""
    words = shlex.split(command, comments=True)
    if tuple(words) in _ALIASES:
        return list(_ALIASES[tuple(words)])
    for program in _PROGRAMS:
        if tuple(words[: len(program)]) == program:
            return words[len(program) :]
    return None


def normalize(line: str) -> str:
    """``line`` with its volatile numbers replaced and trailing blanks removed."""
    return _VOLATILE.sub("<t>", line.rstrip())


def _line_pattern(expected: str) -> re.Pattern[str]:
    parts = re.split(r"(\.\.\.|<t>|<[A-Za-z][\w-]*>)", normalize(expected))
    regex = "".join(
        ".*" if part == "..." else r"\S+" if _PLACEHOLDER.fullmatch(part) else re.escape(part)
        for part in parts
    )
    return re.compile(regex)


def _matches(expected: list[str], actual: list[str]) -> bool:
    if not expected:
        return not actual
    head, rest = expected[0], expected[1:]
    if head.strip() == "...":
        return any(_matches(rest, actual[i:]) for i in range(len(actual) + 1))
    return (
        bool(actual)
        and _line_pattern(head).fullmatch(normalize(actual[0])) is not None
        and _matches(rest, actual[1:])
    )


def run(argv: list[str]) -> tuple[int, list[str]]:
    """Run ``shardbill argv`` in-process; returns its exit code and printed lines."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(argv)
    return code, out.getvalue().splitlines()


def evaluate(source: str) -> None:
    """Run one block's shardbill commands and check what the page shows."""
    block = commands(source)
    if not any(_argv(c.line) is not None for c in block):
        return  # setup only (pip install, ./run demo): nothing shardbill prints here
    last: tuple[str, int, list[str]] | None = None
    for command in block:
        argv = _argv(command.line)
        if argv is not None:
            if last is not None and last[1] != 0:
                raise AssertionError(_failed(*last))
            code, printed = run(argv)
            if command.shown and not _matches(command.shown, printed):
                raise AssertionError(
                    f"$ {command.line}\nthe page shows:\n"
                    + "\n".join(command.shown)
                    + f"\nit printed (exit {code}):\n"
                    + "\n".join(printed)
                )
            last = (command.line, code, printed)
        elif command.line == "echo $?":
            assert last is not None, "echo $? before any shardbill command"
            assert command.shown == [str(last[1])], _failed(*last)
            last = None
        elif not any(tuple(command.line.split()[: len(p)]) == p for p in _NOT_RUN):
            raise AssertionError(
                f"cannot run {command.line!r} here: mark the block "
                '<!-- shell: skip "why" --> or show only shardbill commands'
            )
    if last is not None and last[1] != 0:
        raise AssertionError(_failed(*last))


def _failed(command: str, code: int, printed: list[str]) -> str:
    return f"$ {command}\nexited {code}, printing:\n" + "\n".join(printed)


class ShellBlockParser:
    """Sybil parser: each shell block is an example run by :func:`evaluate`."""

    def __init__(self) -> None:
        self._parsers = [CodeBlockParser(language, self._evaluate) for language in LANGUAGES]

    def __call__(self, document: Document) -> Iterable[Region]:
        page_skip = PAGE_SKIP_MARKER.search(document.text)
        for parser in self._parsers:
            for region in parser(document):
                marker = page_skip or SKIP_MARKER.search(document.text[: region.start].rstrip())
                if marker is not None:
                    region.parsed = ("skip", marker.group(1))
                yield region

    @staticmethod
    def _evaluate(example: Example) -> None:
        parsed = example.parsed
        if isinstance(parsed, tuple):
            raise unittest.SkipTest(parsed[1])
        evaluate(str(parsed))


def skip_markers(text: str) -> Iterator[tuple[str, str]]:
    """The shell skip markers of a page's text: ("skip" or "skip-page", the reason)."""
    for match in re.finditer(r"^<!-- shell: (skip-page|skip)\b\s*(.*?)\s*-->$", text, re.MULTILINE):
        yield match.group(1), match.group(2)
