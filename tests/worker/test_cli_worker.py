"""``shardbill worker``'s command line: bad options are refused before anything connects."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardbill.cli import main


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
