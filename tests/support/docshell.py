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
with ``<!-- shell: skip-page "why" -->`` anywhere in it. The commands of
those exempt blocks are still checked, without running, by
``tests/test_docs.py::test_exempt_shardbill_commands_parse`` (every
``shardbill`` command line is parsed by the real argument parser); a
non-shardbill command there (``pip install``, ``kafka-topics``) needs
``<!-- shell: not-shardbill "why" -->`` above its block.

``<!-- shell: background "why" -->`` right above a block runs its
``shardbill`` commands in the background (a subprocess, ``python -m
shardbill``, in the page's working directory) until the page ends, for a
command that runs until Ctrl-C (``shardbill worker`` on Kafka). It runs only
inside :func:`background`, which a test holds open around the page: the
test then waits for what the command does, and leaving the ``with`` block
sends each command SIGINT and fails unless it exits 0. Outside it (the
generic page test) a background block fails, so a page that has one needs
a test of its own (``tests/test_docs.py::test_stream_worker_tutorial_runs_on_kafka``).
A background command's output is not compared: the block must show none.
Markers stacked right above one block apply together, in any order.

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
import signal
import subprocess
import sys
import tempfile
import unittest
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from sybil import Document, Example, Region
from sybil.parsers.myst import CodeBlockParser

from shardbill.cli import main

LANGUAGES = ("console", "bash", "shell")
MARKER = re.compile(r"^<!-- shell: ([a-z][a-z-]*)\b\s*(.*?)\s*-->$")
"""One shell marker line: its kind and its reason."""
BLOCK_MARKERS = ("skip", "background", "not-shardbill")
"""The markers that apply to the block right below them."""
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


@dataclass(frozen=True)
class Block:
    """One shell block of a page: its text, and the markers that apply to it."""

    source: str
    markers: dict[str, str]
    """kind -> reason: the block markers right above it, and ``skip-page`` for its page's."""

    @property
    def skipped(self) -> str | None:
        """Why the block is not run (its ``skip`` or its page's ``skip-page``), else None."""
        return self.markers.get("skip", self.markers.get("skip-page"))


def markers_above(text: str, start: int) -> dict[str, str]:
    """The block markers on the lines right above ``start`` (a block's fence), kind -> reason."""
    found: dict[str, str] = {}
    for line in reversed(text[:start].rstrip().splitlines()):
        match = MARKER.match(line.strip())
        if match is None or match.group(1) not in BLOCK_MARKERS:
            break
        found.setdefault(match.group(1), match.group(2))
    return found


class ShellBlockParser:
    """Sybil parser: each shell block is an example run by :func:`evaluate`.

    Its examples' ``parsed`` is a :class:`Block`, so that a test can also
    read the blocks that are not run (see ``test_exempt_shardbill_commands_parse``).
    """

    def __init__(self) -> None:
        self._parsers = [CodeBlockParser(language, self._evaluate) for language in LANGUAGES]

    def __call__(self, document: Document) -> Iterable[Region]:
        page_skip = PAGE_SKIP_MARKER.search(document.text)
        for parser in self._parsers:
            for region in parser(document):
                markers = markers_above(document.text, region.start)
                if page_skip is not None:
                    markers["skip-page"] = page_skip.group(1)
                region.parsed = Block(str(region.parsed), markers)
                yield region

    @staticmethod
    def _evaluate(example: Example) -> None:
        block = example.parsed
        assert isinstance(block, Block)
        if block.skipped is not None:
            raise unittest.SkipTest(block.skipped)
        if "background" in block.markers:
            start_background(block.source)
        else:
            evaluate(block.source)


def shell_blocks(path: Path) -> list[tuple[int, Block]]:
    """Every shell block of the page at ``path`` with its line number, run or not."""
    from sybil import Sybil

    return [
        (example.line, example.parsed)
        for example in Sybil(parsers=[ShellBlockParser()]).parse(path)
        if isinstance(example.parsed, Block)
    ]


@dataclass
class Background:
    """A command of a ``background`` block, running."""

    line: str
    process: subprocess.Popen[bytes]
    output: IO[bytes]
    log: str = ""
    """Everything it printed, once it is stopped (its output file is then closed)."""

    def printed(self) -> str:
        """What it printed so far (standard output and error)."""
        if self.output.closed:
            return self.log
        self.output.flush()
        self.output.seek(0)
        text = self.output.read().decode(errors="replace")
        self.output.seek(0, io.SEEK_END)
        return text


_BACKGROUND: list[Background] | None = None
_BACKGROUND_EXTRA: tuple[str, ...] = ()


def start_background(source: str) -> None:
    """Start the ``shardbill`` commands of a ``background`` block (inside :func:`background`)."""
    if _BACKGROUND is None:
        raise AssertionError(
            "a <!-- shell: background --> block runs only inside docshell.background(), "
            "which a test of its own holds open around the page (it waits for the command's "
            "work and stops it)"
        )
    for command in commands(source):
        assert not command.shown, (
            f"$ {command.line}: a background command's output is not compared; show none"
        )
        argv = _argv(command.line)
        if argv is None:
            if any(tuple(command.line.split()[: len(p)]) == p for p in _NOT_RUN):
                continue
            raise AssertionError(f"cannot run {command.line!r} in the background here")
        output = tempfile.TemporaryFile()  # noqa: SIM115 - closed when the command is stopped
        process = subprocess.Popen(
            [sys.executable, "-m", "shardbill", *argv, *_BACKGROUND_EXTRA],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        _BACKGROUND.append(Background(command.line, process, output))


@contextlib.contextmanager
def background(
    extra_args: Sequence[str] = (), stop_timeout: float = 60.0
) -> Iterator[list[Background]]:
    """Let a page's ``background`` blocks run; yields the commands as they start.

    Args:
        extra_args: appended to every background command (a setting the test
            needs and the reader does not, such as a shorter session timeout).
        stop_timeout: seconds each command may take to exit after its SIGINT.

    Raises:
        AssertionError: on leaving, a command had exited before its SIGINT,
            did not exit within ``stop_timeout`` after it, or exited non-zero.
    """
    global _BACKGROUND, _BACKGROUND_EXTRA
    assert _BACKGROUND is None, "docshell.background() does not nest"
    started: list[Background] = []
    _BACKGROUND, _BACKGROUND_EXTRA = started, tuple(extra_args)
    try:
        yield started
    except BaseException:
        for command in started:
            _stop(command, stop_timeout)
        raise
    else:
        failures = [
            problem for command in started if (problem := _stop(command, stop_timeout)) is not None
        ]
        if failures:
            raise AssertionError("\n\n".join(failures))
    finally:
        _BACKGROUND, _BACKGROUND_EXTRA = None, ()
        for command in started:
            command.log = command.printed()
            command.output.close()


def _stop(command: Background, timeout: float) -> str | None:
    """SIGINT (Ctrl-C) to ``command`` and its exit; returns what went wrong, or None."""
    early = command.process.poll()
    if early is None:
        command.process.send_signal(signal.SIGINT)
        try:
            code = command.process.wait(timeout)
        except subprocess.TimeoutExpired:
            command.process.kill()
            command.process.wait()
            return f"$ {command.line}\ndid not exit within {timeout:g} s of its SIGINT:\n" + (
                command.printed()
            )
        if code == 0:
            return None
        return f"$ {command.line}\nexited {code} after its SIGINT, printing:\n" + command.printed()
    return f"$ {command.line}\nexited {early} before the page ended, printing:\n" + (
        command.printed()
    )


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
    for kind, reason in shell_markers(text):
        if kind in ("skip", "skip-page"):
            yield kind, reason


def shell_markers(text: str) -> Iterator[tuple[str, str]]:
    """Every shell marker line of a page's text: (its kind, its reason)."""
    for line in text.splitlines():
        match = MARKER.match(line.strip())
        if match is not None:
            yield match.group(1), match.group(2)
