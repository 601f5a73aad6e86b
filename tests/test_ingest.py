"""Events files in, exact aggregates out; each bad line set aside with its number and reason."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from shardbill import AggregationWriter, Pipeline, ShardMap
from shardbill.errors import ConfigurationError
from shardbill.ingest import (
    FileEvent,
    Format,
    IngestInterrupted,
    RejectedLine,
    Repeat,
    detect_format,
    events_of,
    ingest,
    read_events,
)
from shardbill.rules import UsageEvent, comms
from shardbill.tables.catalog import billing_tables
from shardbill.workloads.synthetic import Traffic
from tests.support.backends import Backend
from tests.support.clock import recent_start
from tests.support.oracle import actual_rows, expected_rows


def _line(event_id: str, account: object = 42, **changes: object) -> str:
    data: dict[str, object] = {
        "event_id": event_id,
        "account": account,
        "time": "2026-11-01T10:00:00Z",
        "product": "sms",
        "quantity": 1,
        "dimensions": {"country": "GB", "characters": 200},
    }
    data.update(changes)
    return json.dumps(data)


def _items(path: Path, fmt: Format, *, account_as_int: bool = True) -> list[object]:
    return list(read_events(path, fmt=fmt, account_as_int=account_as_int))


def test_jsonl_lines_keep_their_numbers_and_exact_quantities(tmp_path: Path) -> None:
    """Blank lines are skipped but counted; a fractional quantity is read as an exact Decimal."""
    path = tmp_path / "e.jsonl"
    path.write_text(
        "\n".join([_line("a"), "", _line("b", product="email", quantity=1.1), "   "]) + "\n",
        encoding="utf-8",
    )
    items = _items(path, Format.JSONL)
    assert [type(i) for i in items] == [FileEvent, FileEvent]
    first, second = items
    assert isinstance(first, FileEvent)
    assert isinstance(second, FileEvent)
    assert (first.line, second.line) == (1, 3)
    assert second.event.quantity == Decimal("1.1")
    assert second.text == _line("b", product="email", quantity=1.1)


def test_jsonl_bad_lines_are_rejected_with_a_reason(tmp_path: Path) -> None:
    """Not JSON, not an object, NaN, not UTF-8, not a valid event: each rejected alone."""
    path = tmp_path / "e.jsonl"
    lines = [
        b"{not json",
        b"[1, 2]",
        _line("n", quantity=1).replace('"quantity": 1', '"quantity": NaN').encode(),
        b'{"event_id": "\xff\xfe"}',
        _line("t", time="2026-11-01T10:00:00").encode(),
        _line("ok").encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    items = _items(path, Format.JSONL)
    rejected = [i for i in items if isinstance(i, RejectedLine)]
    assert [(r.line, r.stage) for r in rejected] == [
        (1, "parse"),
        (2, "parse"),
        (3, "parse"),
        (4, "parse"),
        (5, "event"),
    ]
    assert "not valid JSON" in rejected[0].reason
    assert "JSON object" in rejected[1].reason
    assert "NaN" in rejected[2].reason
    assert "UTF-8" in rejected[3].reason
    assert rejected[4].event_id == "t"
    assert "timezone" in rejected[4].reason
    assert [i.line for i in items if isinstance(i, FileEvent)] == [6]


def test_a_repeat_counts_once_and_a_changed_repeat_is_a_conflict(tmp_path: Path) -> None:
    """The same event again is a Repeat; the same id with other content is rejected."""
    path = tmp_path / "e.jsonl"
    path.write_text(
        "\n".join([_line("a"), _line("a"), _line("a", quantity=2), _line("b")]) + "\n",
        encoding="utf-8",
    )
    items = _items(path, Format.JSONL)
    assert isinstance(items[1], Repeat)
    assert (items[1].line, items[1].first_line) == (2, 1)
    assert isinstance(items[2], RejectedLine)
    assert items[2].stage == "conflict"
    assert "line 1" in items[2].reason
    assert [e.event_id for e in events_of(items)] == ["a", "b"]  # type: ignore[arg-type]


def test_csv_records_with_dimensions_and_multiline_fields(tmp_path: Path) -> None:
    """CSV: a BOM, dimensions.NAME columns (empty: absent), quoted newlines, wrong widths."""
    path = tmp_path / "e.csv"
    path.write_bytes(
        (
            "\ufeffevent_id,account,time,product,quantity,dimensions.country,dimensions.note\r\n"
            "c1,42,2026-11-01T10:00:00Z,sms,1,GB,\r\n"
            'c2,43,2026-11-01T10:00:00Z,voice,61,US,"two\r\nlines"\r\n'
            "c3,44,2026-11-01T10:00:00Z,sms,1\r\n"
            "c4,x44,2026-11-01T10:00:00Z,sms,1,,\r\n"
            "\r\n"
            "c5,45,2026-11-01T10:00:00Z,email,2.5,,\r\n"
        ).encode()
    )
    items = _items(path, Format.CSV)
    events = [i for i in items if isinstance(i, FileEvent)]
    rejected = [i for i in items if isinstance(i, RejectedLine)]
    assert [(e.line, e.event.event_id) for e in events] == [(2, "c1"), (8, "c5")]
    assert events[0].event.account == 42
    assert dict(events[0].event.dimensions) == {"country": "GB"}
    assert events[1].event.quantity == Decimal("2.5")
    assert [(r.line, r.stage) for r in rejected] == [(3, "event"), (5, "parse"), (6, "event")]
    assert "printable" in rejected[0].reason  # a dimension cannot hold a line break
    assert rejected[0].text == 'c2,43,2026-11-01T10:00:00Z,voice,61,US,"two\r\nlines"'
    assert "5 fields, the header has 7" in rejected[1].reason
    assert "'account' must be an integer" in rejected[2].reason


def test_csv_accounts_stay_text_for_a_varchar_account_column(tmp_path: Path) -> None:
    """Without account_as_int a CSV account is a string id."""
    path = tmp_path / "e.csv"
    path.write_text(
        "event_id,account,time,product,quantity\nc1,42,2026-11-01T10:00:00Z,sms,1\n",
        encoding="utf-8",
    )
    (item,) = _items(path, Format.CSV, account_as_int=False)
    assert isinstance(item, FileEvent)
    assert item.event.account == "42"


@pytest.mark.parametrize(
    ("name", "explicit", "expected"),
    [
        ("a.jsonl", None, Format.JSONL),
        ("a.NDJSON", None, Format.JSONL),
        ("a.json", None, Format.JSONL),
        ("a.csv", None, Format.CSV),
        ("a.txt", "csv", Format.CSV),
    ],
)
def test_the_format_comes_from_the_option_or_the_extension(
    name: str, explicit: str | None, expected: Format
) -> None:
    """--format wins; otherwise the extension decides."""
    assert detect_format(name, explicit) is expected


def test_an_unknown_extension_asks_for_format() -> None:
    """A file the extension cannot place names --format in the error."""
    with pytest.raises(ConfigurationError, match="--format"):
        detect_format("events.txt")


# --------------------------------------------------------------------------- end to end


def _pipeline(backend: Backend) -> Pipeline:
    writer = AggregationWriter(
        shard_map=ShardMap.create(backend.shards, slots=64),
        provider=backend.provider,
        tables=billing_tables(),
    )
    writer.ensure_schema()
    return Pipeline(engine=comms.engine(), writer=writer)


def _good_events(n: int) -> list[UsageEvent]:
    return list(
        Traffic(model="skewed", events=n, seed=21, accounts=50, start=recent_start()).distinct()
    )


def _as_line(event: UsageEvent) -> str:
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


def test_ingest_writes_good_lines_rejects_bad_ones_and_a_rerun_changes_nothing(
    backend: Backend, tmp_path: Path
) -> None:
    """Good lines land exactly; each bad line is in the rejects file; a rerun is a no-op."""
    good = _good_events(300)
    lines = [_as_line(e) for e in good]
    lines.insert(10, "oops")  # line 11: parse
    lines.insert(20, _as_line(good[3]))  # line 21: a repeat of line 4
    lines.insert(30, _line("fax-1", product="fax"))  # line 31: rules
    lines.insert(40, _line("str-1", account="acct-9"))  # line 41: writer (BIGINT column)
    lines.insert(50, _line(good[0].event_id, quantity=99))  # line 51: conflict with line 1
    path = tmp_path / "day.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    pipeline = _pipeline(backend)
    with pipeline.writer:
        first = ingest(path, pipeline=pipeline, fmt=Format.JSONL, account_as_int=False,
                       batch_size=64)  # fmt: skip
        rows = actual_rows(backend)
        rejects_first = (tmp_path / "day.jsonl.rejects.jsonl").read_text(encoding="utf-8")
        again = ingest(path, pipeline=pipeline, fmt=Format.JSONL, account_as_int=False,
                       batch_size=100)  # fmt: skip
    rejected = [json.loads(line) for line in rejects_first.splitlines()]
    assert [(r["line"], r["stage"]) for r in rejected] == [
        (11, "parse"),
        (31, "rules"),
        (41, "writer"),
        (51, "conflict"),
    ]
    assert rejected[0]["text"] == "oops"
    assert rejected[1]["event_id"] == "fax-1"
    assert "fax" in rejected[1]["reason"]
    assert "account_id" in rejected[2]["reason"]
    assert rejected[3]["event_id"] == good[0].event_id
    assert json.loads(rejected[3]["text"])["quantity"] == 99

    assert (first.records, first.events, first.repeats) == (305, 302, 1)
    assert (first.applied, first.duplicates, first.rejected, first.failed) == (300, 0, 4, 0)
    assert first.exit_code == 1
    assert rows == expected_rows(comms.engine().price_batch(good).charges)

    assert (again.applied, again.duplicates, again.rejected) == (0, 300, 4)
    assert actual_rows(backend) == rows
    assert (tmp_path / "day.jsonl.rejects.jsonl").read_text(encoding="utf-8") == rejects_first


def test_an_id_applied_by_an_earlier_file_with_other_content_is_a_conflict(
    backend: Backend, tmp_path: Path
) -> None:
    """The ledger remembers across files: a reused id with new content is rejected, not added."""
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text(_line("x-1") + "\n" + _line("x-2") + "\n", encoding="utf-8")
    second.write_text(_line("x-1", quantity=5) + "\n" + _line("x-3") + "\n", encoding="utf-8")
    pipeline = _pipeline(backend)
    with pipeline.writer:
        ingest(first, pipeline=pipeline, fmt=Format.JSONL, account_as_int=True, batch_size=10)
        summary = ingest(
            second,
            pipeline=pipeline,
            fmt=Format.JSONL,
            account_as_int=True,
            batch_size=10,
            rejects_path=tmp_path / "rejects.out",
        )
    (rejected,) = [json.loads(x) for x in (tmp_path / "rejects.out").read_text().splitlines()]
    assert (rejected["line"], rejected["stage"], rejected["event_id"]) == (1, "conflict", "x-1")
    assert (summary.applied, summary.rejected) == (1, 1)
    events = list(
        events_of(read_events(first, fmt=Format.JSONL, account_as_int=True))
    ) + [e for e in events_of(read_events(second, fmt=Format.JSONL, account_as_int=True))
         if e.event_id == "x-3"]  # fmt: skip
    assert actual_rows(backend) == expected_rows(comms.engine().price_batch(events).charges)


def test_a_clean_file_exits_zero_and_leaves_an_empty_rejects_file(
    backend: Backend, tmp_path: Path
) -> None:
    """Every line applied: exit code 0, the rejects file exists and is empty."""
    path = tmp_path / "ok.csv"
    header = "event_id,account,time,product,quantity,dimensions.country\n"
    path.write_text(
        header + "k1,1,2026-11-01T00:00:00Z,email,3,FR\nk2,2,2026-11-01T00:00:00Z,email,4,\n",
        encoding="utf-8",
    )
    pipeline = _pipeline(backend)
    with pipeline.writer:
        summary = ingest(path, pipeline=pipeline, fmt=Format.CSV, account_as_int=True,
                         batch_size=1)  # fmt: skip
    assert (summary.applied, summary.rejected, summary.exit_code) == (2, 0, 0)
    assert (tmp_path / "ok.csv.rejects.jsonl").read_text(encoding="utf-8") == ""
    balance = {
        key[0]: value
        for key, value in actual_rows(backend)["account_balance"].items()
        if key[1] == "USD"
    }
    assert balance == {1: [2700, 1, 2700], 2: [3600, 1, 3600]}  # 0.0009 per email


def test_an_interrupted_ingest_says_what_it_wrote_and_a_rerun_completes_it(
    backend: Backend, tmp_path: Path
) -> None:
    """Ctrl-C mid-file: the summary so far names the last whole line; a rerun adds the rest once."""
    good = _good_events(300)
    path = tmp_path / "day.jsonl"
    path.write_text("".join(_as_line(e) + "\n" for e in good), encoding="utf-8")
    half = path.stat().st_size // 2

    def ctrl_c_halfway(read: int) -> None:
        if read > half:
            raise KeyboardInterrupt

    pipeline = _pipeline(backend)
    with pipeline.writer:
        with pytest.raises(IngestInterrupted) as caught:
            ingest(path, pipeline=pipeline, fmt=Format.JSONL, account_as_int=True,
                   batch_size=64, on_bytes=ctrl_c_halfway)  # fmt: skip
        partial = caught.value.summary
        rows = actual_rows(backend)
        again = ingest(path, pipeline=pipeline, fmt=Format.JSONL, account_as_int=True,
                       batch_size=64)  # fmt: skip
    assert isinstance(caught.value, KeyboardInterrupt)
    assert partial.interrupted
    assert partial.applied == 128  # two whole batches of 64 before the middle of the file
    assert partial.done_through_line == 128
    assert rows == expected_rows(comms.engine().price_batch(good[:128]).charges)
    assert "line 128" in caught.value.describe()
    assert "run the same command again" in caught.value.describe()
    assert (again.applied, again.duplicates, again.interrupted) == (172, 128, False)
    assert actual_rows(backend) == expected_rows(comms.engine().price_batch(good).charges)


def test_ingest_reports_events_done_after_each_batch(backend: Backend, tmp_path: Path) -> None:
    """on_events hears the count of events settled after every batch (for events/s and ETA)."""
    good = _good_events(150)
    path = tmp_path / "day.jsonl"
    path.write_text("".join(_as_line(e) + "\n" for e in good), encoding="utf-8")
    heard: list[int] = []
    pipeline = _pipeline(backend)
    with pipeline.writer:
        ingest(path, pipeline=pipeline, fmt=Format.JSONL, account_as_int=True, batch_size=64,
               on_events=heard.append)  # fmt: skip
    assert heard == [64, 128, 150]
