"""The docs' shell-block runner (tests/support/docshell.py) reads sessions and compares honestly."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.support import docshell
from tests.support.clock import recent_start


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


def test_a_brace_group_expands_as_the_shell_does() -> None:
    """``demo{0,1}`` is two words; words without a group are left alone."""
    assert docshell.expand(["--mysql", "u://h/demo{0,1,2}", "x{y}"]) == [
        "--mysql",
        "u://h/demo0",
        "u://h/demo1",
        "u://h/demo2",
        "x{y}",
    ]
    assert docshell._argv("shardbill demo --mysql db{0,1}") == ["demo", "--mysql", "db0", "db1"]


def test_a_heredoc_and_cut_are_emulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``cat >> FILE <<'EOF'`` appends the lines up to EOF; ``cut -c1-N`` checks them cut."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f.txt").write_text("first\n", encoding="utf-8")
    docshell.evaluate("$ cat >> f.txt <<'EOF'\nsecond line\nEOF\n$ shardbill --version\n...\n")
    assert (tmp_path / "f.txt").read_text(encoding="utf-8") == "first\nsecond line\n"
    monkeypatch.setattr(docshell, "SQL_RUNNER", lambda database, sql: None)
    docshell.evaluate("$ cut -c1-3 f.txt\nfir\nsec\n")
    with pytest.raises(AssertionError, match="the file holds"):
        docshell.evaluate("$ cut -c1-3 f.txt\nfirst\nsec\n")


def test_sql_runs_only_through_a_runner_a_test_sets() -> None:
    """``mariadb -e`` beside shardbill fails unless a test against a server gives a runner."""
    block = (
        '$ mariadb -h127.0.0.1 -uroot billing1 -e "UPDATE t SET a = 1"\n'
        "$ shardbill --version\n...\n"
    )
    with pytest.raises(AssertionError, match="shell: skip"):
        docshell.evaluate(block)
    ran: list[tuple[str | None, str]] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(docshell, "SQL_RUNNER", lambda database, sql: ran.append((database, sql)))
        docshell.evaluate(block)
        docshell.evaluate('$ mariadb -uroot -e "CREATE DATABASE x"\n')  # a setup-only block
    assert ran == [("billing1", "UPDATE t SET a = 1"), (None, "CREATE DATABASE x")]


def test_a_toml_block_naming_its_file_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``# NAME.toml: ...`` as the first line: the block is saved as NAME.toml; others not."""
    from sybil import Sybil

    page = tmp_path / "page.md"
    page.write_text(
        "```toml\n# app.toml: a file\n[writer]\nbatch_size = 5\n```\n\n"
        "```toml\n[writer]\nbatch_size = 6\n```\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    examples = list(Sybil(parsers=[docshell.FileBlockParser()]).parse(page))
    assert len(examples) == 1
    examples[0].evaluate()
    assert (tmp_path / "app.toml").read_text(encoding="utf-8").endswith("batch_size = 5\n")


def test_markers_stacked_above_a_block_apply_to_it_in_any_order() -> None:
    """The marker lines right above a fence are the block's; text between ends the stack."""
    text = (
        '<!-- shell: background "a" -->\n\nSome text.\n\n'
        '<!-- shell: not-shardbill "b" -->\n<!-- shell: skip "c" -->\n```console\n'
    )
    assert docshell.markers_above(text, text.index("```")) == {
        "not-shardbill": '"b"',
        "skip": '"c"',
    }
    assert docshell.markers_above(text, text.index("Some")) == {"background": '"a"'}
    assert docshell.markers_above("text\n```console\n", 5) == {}


def test_a_background_block_runs_only_inside_a_test_that_stops_it() -> None:
    """Outside :func:`docshell.background` (the generic page test) a background block fails."""
    with pytest.raises(AssertionError, match=r"runs only inside docshell\.background"):
        docshell.start_background("$ shardbill worker --config x.toml\n")


def _directory_deployment(tmp_path: Path) -> None:
    (tmp_path / "events").mkdir()
    (tmp_path / "shardbill.toml").write_text(
        '[shards]\ns0 = "sqlite:///s0.db"\n\n[worker]\nsource = "dir:events"\n', encoding="utf-8"
    )
    assert docshell.run(["init", "--config", "shardbill.toml"])[0] == 0
    event = {
        "event_id": "e1",
        "account": 7,
        "time": recent_start().isoformat(),
        "product": "sms",
        "quantity": 1,
    }
    (tmp_path / "events" / "a.jsonl").write_text(json.dumps(event) + "\n", encoding="utf-8")


def test_a_background_command_runs_until_the_block_ends_and_must_exit_zero_on_sigint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A background command is a process in the page's directory while the test waits;
    leaving :func:`docshell.background` sends it SIGINT and checks that it exits 0. The
    extra arguments a test passes are appended."""
    monkeypatch.chdir(tmp_path)
    _directory_deployment(tmp_path)
    with docshell.background(extra_args=["--progress", "0.1"]) as started:
        docshell.start_background(
            "$ pip install 'shardbill[kafka]'\n$ shardbill worker \\\n    --config shardbill.toml\n"
        )
        assert [c.line for c in started] == ["shardbill worker --config shardbill.toml"]
        assert started[0].process.args[-2:] == ["--progress", "0.1"]  # type: ignore[index]
        committed = tmp_path / "events" / ".shardbill-offsets.json"
        deadline = time.monotonic() + 60  # a SIGINT before its handler is set would kill it
        while not committed.exists() and time.monotonic() < deadline:
            assert started[0].process.poll() is None, started[0].printed()
            time.sleep(0.05)
        assert started[0].process.poll() is None  # running: a worker waits for more lines
    assert started[0].process.returncode == 0
    assert "SIGINT: finishing the batch" in started[0].printed()


def test_a_background_command_that_exits_early_or_non_zero_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command that ended before the page did fails the block with its output."""
    monkeypatch.chdir(tmp_path)

    def exits_at_once() -> None:
        with docshell.background() as started:
            docshell.start_background("$ shardbill worker --config missing.toml\n")
            started[0].process.wait(60)

    with pytest.raises(AssertionError, match=r"exited 2 before the page ended(.|\n)*missing\.toml"):
        exits_at_once()
    with pytest.raises(AssertionError, match="output is not compared"), docshell.background():
        docshell.start_background("$ shardbill worker --config shardbill.toml\nworker: ...\n")
