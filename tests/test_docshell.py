"""The docs' shell-block runner (tests/support/docshell.py) reads sessions and compares honestly."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import docshell


def test_a_session_splits_into_commands_with_their_output() -> None:
    """``$`` lines are commands (``\\`` continues one); the lines after are its output."""
    block = "$ shardbill map show \\\n      --config x.toml\nline one\n  line two\n$ echo $?\n0\n"
    (first, second) = docshell.commands(block)
    assert first.line == "shardbill map show --config x.toml"
    assert first.shown == ["line one", "  line two"]
    assert (second.line, second.shown) == ("echo $?", ["0"])


def test_a_script_without_prompts_is_all_commands() -> None:
    """Without ``$`` prompts every non-comment line is a command with no output shown."""
    block = "# set up\nshardbill reshard status   # counts\n\nshardbill reshard verify\n"
    assert [c.line for c in docshell.commands(block)] == [
        "shardbill reshard status   # counts",
        "shardbill reshard verify",
    ]


@pytest.mark.parametrize(
    ("shown", "printed", "match"),
    [
        (["a", "...", "z"], ["a", "b", "c", "z"], True),
        (["a", "...", "z"], ["a", "z"], True),
        (["a", "...", "z"], ["a", "b"], False),
        (["slot <slot>: ok"], ["slot 7921: ok"], True),
        (["slot <slot>: ok"], ["slot 7921 x: ok"], False),
        (["written in 23.3 s: 4,298 events/s"], ["written in 1.0 s: 99 events/s"], True),
        (["88,746 rows"], ["88,747 rows"], False),
        (["exact"], ["exact", "extra line"], False),
    ],
)
def test_shown_output_matches_with_ellipsis_placeholders_and_timings(
    shown: list[str], printed: list[str], match: bool
) -> None:
    """``...`` lines, ``<word>`` tokens and timings are free; every other character counts."""
    assert docshell._matches(shown, printed) is match


def test_a_wrong_output_fails_and_shows_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command whose output differs from the page fails, quoting the page and the output."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AssertionError, match="the page shows"):
        docshell.evaluate("$ shardbill --version\nshardbill 0.0.0-not-this\n")


def test_a_failing_command_fails_unless_its_exit_code_is_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-zero exit fails the block; ``echo $?`` showing that code accepts it."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AssertionError, match="exited 2"):
        docshell.evaluate("$ shardbill map show --config missing.toml\n")
    docshell.evaluate("$ shardbill map show --config missing.toml\n...\n$ echo $?\n2\n")
    with pytest.raises(AssertionError, match="exited 2"):
        docshell.evaluate("$ shardbill map show --config missing.toml\n...\n$ echo $?\n0\n")


def test_an_unknown_command_beside_shardbill_fails() -> None:
    """A block mixing shardbill with a command the runner cannot run must be marked."""
    with pytest.raises(AssertionError, match="shell: skip"):
        docshell.evaluate("$ shardbill --version\n...\n$ rm -rf data\n")
