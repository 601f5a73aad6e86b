"""The ``[worker]`` section of the configuration file: defaults of ``shardbill worker``."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from shardbill.config import Config
from shardbill.errors import ConfigurationError

BASE = '[shards]\ns0 = "sqlite:///s0.db"\n'


def _load(text: str, tmp_path: Path) -> Config:
    path = tmp_path / "shardbill.toml"
    path.write_text(BASE + textwrap.dedent(text), encoding="utf-8")
    return Config.load(path)


def test_every_key_lands_and_a_relative_file_is_next_to_the_config(tmp_path: Path) -> None:
    """A full section; the dead-letters path resolves against the file's directory."""
    config = _load(
        """
        [worker]
        bootstrap_servers = "k1:9092,k2:9092"
        topics = ["usage", "usage-eu"]
        group = "billing"
        dead_letters = "dead/letters.jsonl"
        batch_size = 300
        max_held = 900
        linger_ms = 50
        drain_timeout_seconds = 12
        connect_timeout_seconds = 7.5

        [worker.kafka]
        "security.protocol" = "SASL_SSL"
        "sasl.password" = "env:KAFKA_PASSWORD"
        """,
        tmp_path,
    )
    worker = config.worker
    assert worker.bootstrap_servers == "k1:9092,k2:9092"
    assert worker.topics == ("usage", "usage-eu")
    assert worker.group == "billing"
    assert worker.dead_letters == tmp_path / "dead" / "letters.jsonl"
    assert (worker.batch_size, worker.linger_ms, worker.drain_timeout_seconds) == (300, 50, 12)
    assert (worker.max_held, worker.connect_timeout_seconds) == (900, 7.5)
    assert dict(worker.kafka) == {
        "security.protocol": "SASL_SSL",
        "sasl.password": "env:KAFKA_PASSWORD",
    }


def test_no_section_gives_the_defaults(tmp_path: Path) -> None:
    """Without ``[worker]`` the command's options must name topic and group."""
    worker = _load("", tmp_path).worker
    assert (worker.topics, worker.group, worker.batch_size, worker.linger_ms) == (
        (),
        None,
        None,
        200,
    )
    assert (worker.max_held, worker.connect_timeout_seconds) == (None, 30.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[worker]\ntopic = "usage"\n', "worker.topic: unknown key"),
        ('[worker]\ntopics = "usage"\n', "worker.topics: must be a list of topic names"),
        ("[worker]\nlinger_ms = -1\n", "worker.linger_ms: must be an integer from 0"),
        (
            '[worker]\ndead_letters = "d.jsonl"\ndead_letter_topic = "d"\n',
            "give either dead_letter_topic or dead_letters",
        ),
        ('[worker.kafka]\n"acks" = 1\n', "worker.kafka.acks: must be a string"),
        ("[worker]\nmax_held = 0\n", "worker.max_held: must be an integer from 1"),
        ('[worker]\nmax_held = "lots"\n', "worker.max_held: must be an integer"),
        (
            "[worker]\nconnect_timeout_seconds = 0\n",
            "worker.connect_timeout_seconds: must be a number of seconds > 0",
        ),
        (
            '[worker]\nconnect_timeout_seconds = "5s"\n',
            "worker.connect_timeout_seconds: must be a number of seconds > 0",
        ),
        (
            "[worker]\nbatch_size = 100\nmax_held = 50\n",
            r"worker.max_held: 50 is below worker.batch_size \(100\)",
        ),
    ],
)
def test_an_error_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    """Each bad value is refused naming its key."""
    with pytest.raises(ConfigurationError, match=message):
        _load(text, tmp_path)


def test_a_secret_in_the_file_is_refused_and_not_shown(tmp_path: Path) -> None:
    """A password setting must come from the environment (``env:NAME``); its value is never
    repeated in the error."""
    with pytest.raises(ConfigurationError) as caught:
        _load('[worker.kafka]\n"sasl.password" = "hunter2"\n', tmp_path)
    assert "worker.kafka.sasl.password: a secret never belongs in the file" in str(caught.value)
    assert "env:NAME" in str(caught.value)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [('"kafka"', "kafka"), ('"dir:in/events"', "in/events"), (None, None)],
)
def test_the_source_is_kafka_or_a_directory_next_to_the_config(
    value: str | None, expected: str | None, tmp_path: Path
) -> None:
    """``source = "dir:PATH"`` is kept as the absolute directory beside the file; absent, None."""
    config = _load(f"[worker]\nsource = {value}\n" if value else "[worker]\n", tmp_path)
    if expected in (None, "kafka"):
        assert config.worker.source == expected
    else:
        assert config.worker.source == (tmp_path / expected).resolve()


@pytest.mark.parametrize("value", ['"dir:"', '"files:x"', "3"])
def test_a_source_that_is_neither_is_refused_naming_the_key_and_both_forms(
    value: str, tmp_path: Path
) -> None:
    """Anything else is a ConfigurationError naming ``worker.source`` and the two forms."""
    with pytest.raises(ConfigurationError, match=r"worker\.source"):
        _load(f"[worker]\nsource = {value}\n", tmp_path)
