"""``shardbill statement`` and ``shardbill audit --period`` on a SQLite deployment, in process."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from shardbill import AggregationWriter, PooledProvider, ShardMap
from shardbill.cli import main
from shardbill.mapstore import JsonFileMapStore
from shardbill.periods import PeriodCloser
from shardbill.pipeline import Pipeline
from shardbill.rules import UsageEvent, comms
from shardbill.statements import verify_csv, verify_json
from shardbill.tables.catalog import billing_tables
from tests.support.clock import fixed_clock

SHARDS = ["s0", "s1", "s2"]


def usage(i: int, month: int = 11) -> UsageEvent:
    return UsageEvent(
        event_id=f"e{month}-{i}",
        account=40 + i % 4,
        time=dt.datetime(2026, month, 1 + i % 28, 10, tzinfo=dt.UTC),
        product=("sms", "email", "voice")[i % 3],
        quantity=(1, 700, 61)[i % 3],
        dimensions={"country": "GB", "direction": "outbound"},
    )


EVENTS = [usage(i) for i in range(48)] + [usage(i, 12) for i in range(6)]


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    """Three SQLite shards with November and December written; returns the config file."""
    directory = tmp_path / "deploy"
    provider = PooledProvider.sqlite_directory(directory, SHARDS)
    store = JsonFileMapStore(directory / "map.json")
    store.publish(ShardMap.create(SHARDS), expected_epoch=None)
    with AggregationWriter(shard_map=store, provider=provider, tables=billing_tables()) as writer:
        writer.ensure_schema()
        assert Pipeline(engine=comms.engine(), writer=writer).process(EVENTS).ok
    provider.close()
    config = directory / "shardbill.toml"
    config.write_text(
        "[shards]\n"
        + "".join(f'{s} = "sqlite:///{s}.db"\n' for s in SHARDS)
        + '[map_store]\nkind = "json"\npath = "map.json"\n',
        encoding="utf-8",
    )
    return config


def close_november(config: Path) -> None:
    provider = PooledProvider.sqlite_directory(config.parent, SHARDS)
    try:
        closer = PeriodCloser(
            provider=provider,
            shard_map=JsonFileMapStore(config.parent / "map.json"),
            clock=fixed_clock,
        )
        assert closer.close("2026-11", reason="t", drain_seconds=0).state == "closed"
    finally:
        provider.close()


def test_an_open_period_is_refused_with_exit_1(
    deployment: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before the close the command writes nothing, exits 1 and says why and what to do."""
    assert main(["statement", "2026-11", "--config", str(deployment)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "period 2026-11 is open" in captured.err
    assert "shardbill period close 2026-11" in captured.err


def test_out_dir_files_are_the_same_bytes_on_every_run(
    deployment: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--out writes one verified file per account, names each with its checksum, and a
    second run writes the same bytes; JSON and CSV alike."""
    close_november(deployment)
    for fmt, verify in (("json", verify_json), ("csv", verify_csv)):
        runs = []
        for n in range(2):
            out = tmp_path / f"{fmt}-{n}"
            argv = ["statement", "2026-11", "--format", fmt, "--out", str(out)]
            assert main([*argv, "--config", str(deployment)]) == 0
            files = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
            assert sorted(files) == [f"statement-2026-11-{a}.{fmt}" for a in range(40, 44)]
            assert all(verify(data) for data in files.values())
            runs.append(files)
        assert runs[0] == runs[1]
        text = capsys.readouterr().out
        assert "period 2026-11: 4 statement(s)" in text
        assert text.count("sha256 ") == 8


def test_stdout_json_lines_and_one_csv(
    deployment: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """Without --out: JSON is one statement a line; CSV needs one account (else exit 2)."""
    close_november(deployment)
    config = ["--config", str(deployment)]
    assert main(["statement", "2026-11", *config]) == 0
    lines = capsysbinary.readouterr().out.splitlines(keepends=True)
    assert [json.loads(line)["account"] for line in lines] == [40, 41, 42, 43]
    assert all(verify_json(line) for line in lines)
    assert main(["statement", "2026-11", "--account", "41", "--format", "csv", *config]) == 0
    data = capsysbinary.readouterr().out
    assert verify_csv(data)
    assert data.startswith(b"record,period,account,")
    assert main(["statement", "2026-11", "--format", "csv", *config]) == 2
    assert b"--account" in capsysbinary.readouterr().err


def test_audit_period_on_the_command_line(
    deployment: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``audit FILE --period 2026-11`` with November's events only is exact (exit 0) and names
    the skipped table; without --period the December rows are differences (exit 1)."""
    events = tmp_path / "november.jsonl"
    events.write_text(
        "".join(
            json.dumps(
                {
                    "event_id": e.event_id,
                    "account": e.account,
                    "time": e.time.isoformat(),
                    "product": e.product,
                    "quantity": str(e.quantity),
                    "dimensions": dict(e.dimensions),
                }
            )
            + "\n"
            for e in EVENTS
            if e.time.month == 11
        ),
        encoding="utf-8",
    )
    config = ["--config", str(deployment)]
    assert main(["audit", str(events), "--period", "2026-11", "--json", *config]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["audit"], report["period"]) == ("exact", "2026-11")
    assert list(report["skipped"]) == ["account_balance"]
    assert main(["audit", str(events), "--period", "2026-11", *config]) == 0
    assert "account_balance: skipped" in capsys.readouterr().out
    assert main(["audit", str(events), *config]) == 1
    assert main(["audit", str(events), "--period", "2026-13", *config]) == 2
    assert "YYYY-MM" in capsys.readouterr().err
