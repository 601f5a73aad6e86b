"""``shardbill worker``'s command line: bad options are refused before anything connects."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from shardbill.cli import main
from shardbill.cli_worker import _install_signals
from shardbill.worker import MemoryBroker, MemoryDeadLetters, MemorySource, Worker


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
