"""``shardbill worker``'s command line: bad options are refused before anything connects, and
the directory source runs end to end (exact totals, re-runs change nothing, offsets whole)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardbill.cli import main
from shardbill.cli.worker import _install_signals
from shardbill.rules import UsageEvent, comms
from shardbill.worker import MemoryBroker, MemoryDeadLetters, MemorySource, Worker
from shardbill.workloads.synthetic import Traffic
from tests.support.backends import Backend, make_backend
from tests.support.clock import recent_start
from tests.support.oracle import actual_rows, expected_rows


def _config(tmp_path: Path) -> str:
    path = tmp_path / "shardbill.toml"
    path.write_text('[shards]\ns0 = "sqlite:///s0.db"\n', encoding="utf-8")
    return str(path)


def test_a_kafka_option_without_a_value_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--kafka-option KEY`` with no ``=`` exits 2 naming the key and the form it takes."""
    code = main(["worker", "--topic", "t", "--group", "g", "--kafka-option", "acks"])
    assert code == 2
    assert "--kafka-option takes KEY=VALUE" in capsys.readouterr().err


def test_a_secret_option_from_a_missing_variable_names_the_variable_not_a_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``KEY=env:NAME`` reads NAME; unset, the error names NAME."""
    monkeypatch.delenv("SB_TEST_SASL", raising=False)
    code = main(
        [
            "worker",
            "--topic",
            "t",
            "--group",
            "g",
            "--kafka-option",
            "sasl.password=env:SB_TEST_SASL",
        ]
    )
    assert code == 2
    assert "the environment variable SB_TEST_SASL is not set" in capsys.readouterr().err


def test_the_dead_letter_topic_cannot_be_a_consumed_topic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Dead letters written to a topic the worker reads would come back: refused, exit 2."""
    code = main(
        [
            "worker",
            "--topic",
            "usage",
            "--group",
            "g",
            "--dead-letter-topic",
            "usage",
            "--config",
            _config(tmp_path),
        ]
    )
    assert code == 2
    assert "--dead-letter-topic 'usage' is also a --topic" in capsys.readouterr().err


def test_a_setting_the_worker_owns_cannot_be_overridden(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``enable.auto.commit`` would commit before the ledger has the events: refused."""
    code = main(
        [
            "worker",
            "--topic",
            "usage",
            "--group",
            "g",
            "--kafka-option",
            "enable.auto.commit=true",
            "--config",
            _config(tmp_path),
        ]
    )
    assert code == 2
    assert "'enable.auto.commit' is set by the worker" in capsys.readouterr().err


def test_an_unknown_kafka_setting_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """librdkafka refusing a setting is a usage error (exit 2) naming it, not a broker failure."""
    config = _config(tmp_path)
    assert main(["init", "--config", config]) == 0
    code = main(
        [
            "worker",
            "--topic",
            "usage",
            "--group",
            "g",
            "--dead-letters",
            str(tmp_path / "dead.jsonl"),
            "--kafka-option",
            "no.such.setting=1",
            "--config",
            config,
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "no.such.setting" in err
    assert "--kafka-option" in err


def test_a_bad_dead_letter_producer_setting_stops_the_worker_before_it_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The dead-letter producer is built at start: a setting it refuses is exit 2 at once."""
    config = _config(tmp_path)
    assert main(["init", "--config", config]) == 0
    code = main(
        ["worker", "--topic", "usage", "--group", "g", "--kafka-option", "acks=sometimes",
         "--config", config]
    )  # fmt: skip
    assert code == 2
    assert "dead-letter producer" in capsys.readouterr().err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_the_first_signal_asks_the_worker_to_stop_and_the_second_is_left_to_the_system(
    signum: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGTERM or Ctrl-C: the worker is asked to drain and stop, and the default action is
    put back, so that a second signal ends the process at once."""
    worker = Worker(
        source=MemorySource(MemoryBroker({"t": 1}), topics=["t"], group="g"),
        processor=None,  # type: ignore[arg-type]  # never called: nothing is polled
        dead_letters=MemoryDeadLetters(),
    )
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        _install_signals(worker)
        assert not worker.stopping
        signal.raise_signal(signum)
        assert worker.stopping
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)
    assert "finishing the batch and committing (again to exit now)" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["9108", "127.0.0.1:", "127.0.0.1:99999", "host:port"])
def test_an_http_address_without_a_port_is_a_usage_error(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--http`` takes ADDRESS:PORT; anything else exits 2 showing the form."""
    code = main(["worker", "--topic", "t", "--group", "g", "--http", value])
    assert code == 2
    assert "--http takes ADDRESS:PORT" in capsys.readouterr().err


# --------------------------------------------------------------------------- --source dir:PATH


@pytest.fixture
def two_sqlite(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Backend]:
    """Two SQLite shards (the embedded default's kind)."""
    yield from make_backend("sqlite", 2, tmp_path, request)


def _deployment(tmp_path: Path, backend: Backend, extra: str = "") -> str:
    """A configuration over ``backend``'s shards, initialized (map published, schema made)."""
    path = tmp_path / "deploy" / "shardbill.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    shards = "".join(f'{name} = "{url}"\n' for name, url in backend.urls.items())
    path.write_text(f"[shards]\n{shards}[writer]\nbatch_size = 40\n{extra}", encoding="utf-8")
    assert main(["init", "--config", str(path)]) == 0
    return str(path)


def _event_line(event: UsageEvent) -> str:
    return json.dumps(
        {
            "event_id": event.event_id,
            "account": event.account,
            "time": event.time.isoformat(),
            "product": event.product,
            "quantity": str(event.quantity),
            "dimensions": dict(event.dimensions),
        }
    )


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _summary(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    out = capsys.readouterr().out
    assert out.count("\n") == 1, f"--json must print one line on stdout, got {out!r}"
    value = json.loads(out)
    assert isinstance(value, dict)
    return value


def test_a_directory_source_writes_exact_totals_and_running_again_changes_nothing(
    two_sqlite: Backend, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--source dir:PATH`` reads every file's lines once: the shards hold an independent
    oracle's totals, the bad line is a dead letter beside the directory, the offsets file
    names each file's end; a second run reads nothing; with the offsets file removed, a
    third run reads everything again and finds only duplicates."""
    config = _deployment(tmp_path, two_sqlite)
    capsys.readouterr()
    events = list(Traffic(model="skewed", events=260, seed=19, accounts=30).distinct())
    directory = tmp_path / "events"
    directory.mkdir()
    _write_lines(directory / "a.jsonl", [_event_line(e) for e in events[:120]])
    _write_lines(
        directory / "b.jsonl",
        [_event_line(e) for e in events[120:200]] + ["{not json"] + [_event_line(events[5])],
    )
    _write_lines(directory / "c.jsonl", [_event_line(e) for e in events[200:]])
    (directory / "notes.txt").write_text("not an event file\n", encoding="utf-8")
    argv = ["worker", "--source", f"dir:{directory}", "--exit-when-idle", "0.3",
            "--linger-ms", "1", "--json", "--config", config]  # fmt: skip

    assert main(argv) == 0
    first = _summary(capsys)
    assert (first["records"], first["applied"], first["duplicates"]) == (262, 260, 1)
    assert first["dead_letters"] == {"decode": 1}
    assert first["uncommitted"] == 0
    assert first["source"] == f"dir:{directory}"
    rows = actual_rows(two_sqlite)
    assert rows == expected_rows(comms.engine().price_batch(events).charges)
    dead_file = tmp_path / "events.dead-letters.jsonl"
    dead = [json.loads(line) for line in dead_file.read_text(encoding="utf-8").splitlines()]
    assert [(d["topic"], d["offset"], d["stage"]) for d in dead] == [("b.jsonl", 80, "decode")]
    offsets = json.loads((directory / ".shardbill-offsets.json").read_text(encoding="utf-8"))
    assert offsets == {"a.jsonl": 120, "b.jsonl": 82, "c.jsonl": 60}

    assert main(argv) == 0
    second = _summary(capsys)
    assert (second["records"], second["applied"], second["duplicates"]) == (0, 0, 0)
    assert actual_rows(two_sqlite) == rows

    (directory / ".shardbill-offsets.json").unlink()
    assert main(argv) == 0
    third = _summary(capsys)
    assert (third["records"], third["applied"], third["duplicates"]) == (262, 0, 261)
    assert actual_rows(two_sqlite) == rows


def test_the_configuration_can_name_the_directory_relative_to_its_file(
    two_sqlite: Backend, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``[worker] source = "dir:in"`` is the directory beside the configuration file, and
    ``[worker] dead_letters`` where its dead letters go."""
    config = _deployment(
        tmp_path, two_sqlite, '[worker]\nsource = "dir:in"\ndead_letters = "dead.jsonl"\n'
    )
    directory = Path(config).parent / "in"
    directory.mkdir()
    events = list(Traffic(model="uniform", events=50, seed=3, accounts=9).distinct())
    _write_lines(directory / "x.jsonl", [_event_line(e) for e in events] + ["[]"])
    capsys.readouterr()
    assert main(["worker", "--exit-when-idle", "0.3", "--json", "--config", config]) == 0
    summary = _summary(capsys)
    assert (summary["applied"], summary["dead_lettered"]) == (50, 1)
    assert actual_rows(two_sqlite) == expected_rows(comms.engine().price_batch(events).charges)
    assert len((Path(config).parent / "dead.jsonl").read_text(encoding="utf-8").splitlines()) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--topic", "usage"], "--topic: a Kafka option, but the source is the directory"),
        (["--group", "g", "--kafka-option", "acks=all"], "--group, --kafka-option: a Kafka"),
    ],
)
def test_kafka_options_with_a_directory_source_are_refused(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Kafka option beside ``--source dir:PATH`` would be ignored: exit 2 naming it."""
    code = main(["worker", "--source", f"dir:{tmp_path}", *extra, "--config", _config(tmp_path)])
    assert code == 2
    assert message in capsys.readouterr().err


def test_a_missing_source_directory_is_refused_with_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``dir:PATH`` that is no directory: exit 2, saying to create it."""
    missing = tmp_path / "nowhere"
    code = main(["worker", "--source", f"dir:{missing}", "--config", _config(tmp_path)])
    assert code == 2
    assert f"source dir:{missing}: no such directory; create it" in capsys.readouterr().err


def test_dead_letters_inside_the_source_directory_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dead-letter file the source would read back as events: exit 2 before reading."""
    code = main(
        ["worker", "--source", f"dir:{tmp_path}", "--dead-letters", str(tmp_path / "d.jsonl"),
         "--config", _config(tmp_path)]
    )  # fmt: skip
    assert code == 2
    assert "where they would be read again as events" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["dir:", "files:x", "Kafka"])
def test_a_source_that_is_neither_kafka_nor_a_directory_is_a_usage_error(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--source`` takes ``kafka`` or ``dir:PATH``; anything else exits 2 showing both."""
    assert main(["worker", "--source", value]) == 2
    assert "--source takes kafka or dir:PATH" in capsys.readouterr().err


def test_no_topic_and_no_directory_names_both_ways_to_give_a_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With neither a topic nor a directory, the error says how to give either."""
    assert main(["worker", "--config", _config(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "give --topic NAME" in err
    assert "--source dir:PATH" in err


def _worker_process(config: str, directory: Path, *, idle: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "shardbill", "worker", "--source", f"dir:{directory}",
         "--batch-size", "7", "--linger-ms", "1", "--exit-when-idle", idle, "--json",
         "--config", config],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _committed(path: Path) -> dict[str, int]:
    """The offsets file, which must parse whole whenever it exists (it is replaced whole)."""
    if not path.exists():
        return {}
    value = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(value, dict)
    return value


def test_a_worker_killed_repeatedly_leaves_a_whole_offsets_file_and_exact_totals(
    two_sqlite: Backend, tmp_path: Path
) -> None:
    """``shardbill worker --source dir:`` is SIGKILLed each time its offsets file moves on
    (so at some point of its next batch): the offsets file is always whole JSON and never
    goes back; a last run finishes; the shards hold the oracle's totals, nothing doubled."""
    config = _deployment(tmp_path, two_sqlite)
    events = list(
        Traffic(model="hot", events=400, seed=23, accounts=25, start=recent_start()).distinct()
    )
    directory = tmp_path / "events"
    directory.mkdir()
    for index in range(4):
        part = events[index * 100 : (index + 1) * 100]
        _write_lines(directory / f"part-{index}.jsonl", [_event_line(e) for e in part])
    offsets_path = directory / ".shardbill-offsets.json"
    seen: dict[str, int] = {}
    for kill in range(3):
        process = _worker_process(config, directory, idle="60")
        try:
            deadline = time.monotonic() + 120
            while _committed(offsets_path) == seen:
                assert process.poll() is None, f"kill {kill}: the worker exited early"
                assert time.monotonic() < deadline, (
                    f"kill {kill}: the offsets file did not move in 120 s (at {seen})"
                )
                time.sleep(0.005)
        finally:
            process.kill()
            process.communicate(timeout=60)
        now = _committed(offsets_path)
        assert all(now.get(name, 0) >= line for name, line in seen.items()), (seen, now)
        seen = now
    assert sum(seen.values()) < len(events), "the kills came too late to cut a run short"
    last = _worker_process(config, directory, idle="1")
    out, err = last.communicate(timeout=300)
    assert last.returncode == 0, err
    summary = json.loads(out)
    assert summary["applied"] + summary["duplicates"] == summary["records"]
    assert _committed(offsets_path) == {f"part-{i}.jsonl": 100 for i in range(4)}
    assert actual_rows(two_sqlite) == expected_rows(comms.engine().price_batch(events).charges)


def test_the_signal_handlers_are_put_back_when_the_worker_returns(
    two_sqlite: Backend, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``main(["worker", ...])`` called in a program (or a test) leaves SIGTERM and SIGINT
    as it found them once it returns, not bound to a worker that has stopped."""
    config = _deployment(tmp_path, two_sqlite)
    directory = tmp_path / "events"
    directory.mkdir()
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    argv = ["worker", "--source", f"dir:{directory}", "--exit-when-idle", "0.1", "--config", config]
    assert main(argv) == 0
    assert {s: signal.getsignal(s) for s in before} == before


def test_max_held_below_the_batch_size_is_refused_with_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--max-held`` smaller than a batch: exit 2 naming the flag, the value and the fix."""
    code = main(
        ["worker", "--source", f"dir:{tmp_path}", "--batch-size", "50", "--max-held", "20",
         "--config", _config(tmp_path)]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "--max-held 20: below the batch size (50)" in err
    assert "give --max-held 50 or more" in err


def test_max_held_below_the_batch_size_in_the_file_is_refused_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``[worker] max_held`` smaller than the batch size the command ends up with (here the
    ``--batch-size`` option's): exit 2 naming the key, the value and the fix."""
    config = tmp_path / "shardbill.toml"
    config.write_text(
        '[shards]\ns0 = "sqlite:///s0.db"\n[worker]\nmax_held = 20\n', encoding="utf-8"
    )
    code = main(
        ["worker", "--source", f"dir:{tmp_path}", "--batch-size", "50", "--config", str(config)]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert f"[worker] max_held = 20 (in {config}): below the batch size (50)" in err
    assert "max_held = 50 or more" in err


def test_no_reachable_broker_ends_the_worker_with_the_servers_and_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``shardbill worker`` against a closed port stops after ``--connect-timeout`` seconds
    with an error naming the bootstrap servers and the fix, instead of waiting for ever;
    nothing was written."""
    pytest.importorskip("confluent_kafka")
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        servers = f"127.0.0.1:{sock.getsockname()[1]}"
    config = _config(tmp_path)
    assert main(["init", "--config", config]) == 0
    capsys.readouterr()
    code = main(
        ["worker", "--topic", "usage", "--group", "g", "--bootstrap-servers", servers,
         "--dead-letters", str(tmp_path / "dead.jsonl"), "--connect-timeout", "0.5",
         "--config", config]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 3, err  # a broker unreachable: run again once it answers
    assert f"no broker of {servers} answered within 0.5 s" in err
    assert "--bootstrap-servers" in err
    assert not (tmp_path / "dead.jsonl").exists()


def test_the_connect_timeout_comes_from_the_file_when_the_option_is_absent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``[worker] connect_timeout_seconds`` bounds the start when ``--connect-timeout`` is not
    given (the error says the bound it waited)."""
    pytest.importorskip("confluent_kafka")
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        servers = f"127.0.0.1:{sock.getsockname()[1]}"
    config = tmp_path / "shardbill.toml"
    config.write_text(
        '[shards]\ns0 = "sqlite:///s0.db"\n[worker]\nconnect_timeout_seconds = 0.25\n',
        encoding="utf-8",
    )
    assert main(["init", "--config", str(config)]) == 0
    capsys.readouterr()
    code = main(
        ["worker", "--topic", "usage", "--group", "g", "--bootstrap-servers", servers,
         "--dead-letters", str(tmp_path / "dead.jsonl"), "--config", str(config)]
    )  # fmt: skip
    assert code == 3
    assert "answered within 0.25 s" in capsys.readouterr().err
