"""Run the ``shardbill`` commands that the docs' shell blocks show, and check their output.

A ``console``, ``bash`` or ``shell`` block is read as a terminal session: a
line starting with ``$ `` is a command (a trailing ``\\`` continues it), the
lines after it up to the next command are what it printed. A block without
``$`` prompts is a script: every line is a command, none shows output.

Only ``shardbill`` commands run (also spelled ``.venv/bin/shardbill`` or
``python -m shardbill``), in-process through :func:`shardbill.cli.main`, in
the page's working directory, after the page's earlier Python blocks; a
word with one ``{a,b,c}`` group is expanded as the shell would. Other
commands a reader needs for the setup (``pip install``, ``./run ...``) are
not run; ``echo $?`` prints the exit code of the command before it. A
``toml`` block whose first line is ``# NAME.toml: ...`` is written to
``NAME.toml`` (:class:`FileBlockParser`), as a reader saves it. A few more
commands are emulated, so a tutorial can show them: ``cat > FILE <<'EOF'``
(and ``>>``) writes the lines up to ``EOF``, ``cut -c1-N FILE`` prints the
file's lines cut to N characters, and ``mariadb ... [DATABASE] -e "SQL"``
(or ``mysql``) runs the SQL through :data:`SQL_RUNNER`, which a test
against a server sets (unset, the command cannot run). Any other command in
a block with a ``shardbill`` command fails the test: such a block must be
marked right above it with ``<!-- shell: skip "why" -->``, and a page whose
commands need a server the test does not start (MariaDB, a Kafka broker)
with ``<!-- shell: skip-page "why" -->`` anywhere in it.

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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

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
_BRACES = re.compile(r"^(.*)\{([^{}]*,[^{}]*)\}(.*)$")
_HEREDOC = re.compile(r"^cat (>>?) ?(\S+) <<'?(\w+)'?$")
_CUT = re.compile(r"^cut -c1-(\d+) (\S+)$")
_SQL_CLIENTS = ("mariadb", "mysql")

SQL_RUNNER: Callable[[str | None, str], None] | None = None
"""Runs ``(database or None, sql)`` for an emulated ``mariadb -e`` command; set by a test."""


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


def expand(words: list[str]) -> list[str]:
    """``words`` with each ``pre{a,b}post`` word expanded to ``preapost prebpost``."""
    out: list[str] = []
    for word in words:
        match = _BRACES.match(word)
        if match is None:
            out.append(word)
            continue
        head, choices, tail = match.groups()
        out.extend(expand([head + choice + tail for choice in choices.split(",")]))
    return out


def _argv(command: str) -> list[str] | None:
    """The CLI arguments when ``command`` runs shardbill, else None."""
    words = expand(shlex.split(command, comments=True))
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


def _emulated(command: Command) -> bool:
    """Run ``command`` if it is one of the emulated ones (see the module docstring)."""
    heredoc = _HEREDOC.match(command.line)
    if heredoc is not None:
        mode, name, end = heredoc.groups()
        assert end in command.shown, f"{command.line}: no {end} line ends the text"
        text = command.shown[: command.shown.index(end)]
        with Path(name).open("a" if mode == ">>" else "w", encoding="utf-8") as out:
            out.writelines(line + "\n" for line in text)
        return True
    cut = _CUT.match(command.line)
    if cut is not None:
        width, name = int(cut.group(1)), cut.group(2)
        printed = [line[:width] for line in Path(name).read_text(encoding="utf-8").splitlines()]
        if not _matches(command.shown, printed):
            raise AssertionError(
                f"$ {command.line}\nthe page shows:\n"
                + "\n".join(command.shown)
                + "\nthe file holds:\n"
                + "\n".join(printed)
            )
        return True
    words = shlex.split(command.line)
    if words and words[0] in _SQL_CLIENTS and "-e" in words and SQL_RUNNER is not None:
        at = words.index("-e")
        sql = words[at + 1]
        rest = [w for w in words[1:at] + words[at + 2 :] if not w.startswith("-")]
        SQL_RUNNER(rest[0] if rest else None, sql)
        return True
    return False


def evaluate(source: str) -> None:
    """Run one block's shardbill commands and check what the page shows."""
    block = commands(source)
    if not any(_argv(c.line) is not None for c in block):
        if SQL_RUNNER is not None:  # a test against a server runs the reader's SQL too
            for command in block:
                _emulated(command)
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
        elif _emulated(command):
            continue
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


_FILE_COMMENT = re.compile(r"\A# ([\w.-]+\.toml):")


class FileBlockParser:
    """Sybil parser: a ``toml`` block naming its file in its first line is written there."""

    def __init__(self) -> None:
        self._parser = CodeBlockParser("toml", self._evaluate)

    def __call__(self, document: Document) -> Iterable[Region]:
        for region in self._parser(document):
            if _FILE_COMMENT.match(str(region.parsed)):
                yield region

    @staticmethod
    def _evaluate(example: Example) -> None:
        text = str(example.parsed)
        match = _FILE_COMMENT.match(text)
        assert match is not None
        Path(match.group(1)).write_text(text, encoding="utf-8")


def skip_markers(text: str) -> Iterator[tuple[str, str]]:
    """The shell skip markers of a page's text: ("skip" or "skip-page", the reason)."""
    for match in re.finditer(r"^<!-- shell: (skip-page|skip)\b\s*(.*?)\s*-->$", text, re.MULTILINE):
        yield match.group(1), match.group(2)
