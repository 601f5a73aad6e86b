"""Parsers that cannot be crashed, and numbers that mean one thing.

* A JSON line nested 100,000 deep, a line of several MiB, duplicated JSON keys
  and duplicated CSV header columns are rejected with their reason, and the
  lines after them are still processed.
* Account and quantity strings are plain ASCII numbers: no padding, no '_',
  no '+', no non-ASCII digits (``int()`` and ``Decimal()`` accept all of
  those and change what the text means).
* An event id of only whitespace is refused.
* Price books, shard-map JSON, configuration TOML and URLs refuse deep
  nesting and oversized input with their own error class, never a
  RecursionError.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from shardbill.cli import main
from shardbill.config import Config
from shardbill.errors import (
    ConfigurationError,
    InvalidInputError,
    InvalidURLError,
    PriceBookError,
    ShardMapError,
)
from shardbill.ingest import FileEvent, Format, RejectedLine, read_events
from shardbill.providers import ConnectionURL
from shardbill.rules import PriceBook, UsageEvent
from shardbill.shardmap import ShardMap

DEEP = 100_000


def _line(event_id: str, **changes: object) -> str:
    data: dict[str, object] = {
        "event_id": event_id,
        "account": 42,
        "time": "2026-11-01T10:00:00Z",
        "product": "sms",
        "quantity": 1,
    }
    data.update(changes)
    return json.dumps(data)


def _read(path: Path, fmt: Format = Format.JSONL) -> list[object]:
    return list(read_events(path, fmt=fmt, account_as_int=True))


@pytest.mark.parametrize(
    "hostile",
    [
        "[" * DEEP,
        "{" + '"a":[' * DEEP,
        '{"event_id": "x", "dimensions": ' + '{"a": ' * DEEP + "1" + "}" * DEEP + "}",
    ],
    ids=["array", "object", "dimensions"],
)
def test_a_deeply_nested_line_is_rejected_and_the_next_lines_read(
    tmp_path: Path, hostile: str
) -> None:
    """A line nested 100,000 deep is one rejected line naming the depth; later lines are read."""
    path = tmp_path / "e.jsonl"
    path.write_text("\n".join([_line("a"), hostile, _line("b")]) + "\n")
    items = _read(path)
    assert [type(item) for item in items] == [FileEvent, RejectedLine, FileEvent]
    rejected = items[1]
    assert isinstance(rejected, RejectedLine)
    assert rejected.line == 2
    assert rejected.stage == "parse"
    assert "nested" in rejected.reason
    assert len(rejected.text) <= 10_000


def test_ingest_survives_a_deep_line_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """shardbill ingest --json: exit 1, one JSON object, the deep line in the rejects file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shardbill.toml").write_text('[shards]\ns0 = "sqlite:///s0.db"\n')
    assert main(["init"]) == 0
    path = tmp_path / "e.jsonl"
    path.write_text("\n".join([_line("a"), "[" * DEEP, _line("b")]) + "\n")
    capsys.readouterr()
    assert main(["ingest", str(path), "--json"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert (summary["applied"], summary["rejected"]) == (2, 1)
    rejects = [json.loads(line) for line in Path(summary["rejects_path"]).read_text().splitlines()]
    assert [(r["line"], r["stage"]) for r in rejects] == [(2, "parse")]


def test_an_oversized_line_is_rejected_and_the_next_lines_read(tmp_path: Path) -> None:
    """A line over the 1 MiB limit is rejected by size (not parsed); the next line is read."""
    path = tmp_path / "e.jsonl"
    huge = _line("big", product="x" * (3 * 1024 * 1024))
    path.write_text("\n".join([huge, _line("b")]) + "\n")
    items = _read(path)
    assert [type(item) for item in items] == [RejectedLine, FileEvent]
    rejected = items[0]
    assert isinstance(rejected, RejectedLine)
    assert (rejected.line, rejected.stage) == (1, "parse")
    assert "MiB" in rejected.reason
    assert isinstance(items[1], FileEvent)
    assert items[1].line == 2


def test_a_duplicated_json_key_is_rejected_naming_the_key(tmp_path: Path) -> None:
    """{"account": 1, "account": 2} is refused (parsers disagree which wins), naming the key."""
    path = tmp_path / "e.jsonl"
    twice = _line("a")[:-1] + ', "account": 7}'
    nested = _line("c", dimensions={"country": "GB"})[:-2] + ', "country": "US"}}'
    path.write_text("\n".join([twice, _line("b"), nested]) + "\n")
    items = _read(path)
    assert [type(item) for item in items] == [RejectedLine, FileEvent, RejectedLine]
    for item in (items[0], items[2]):
        assert isinstance(item, RejectedLine)
        assert "twice" in item.reason
    assert "'account'" in items[0].reason  # type: ignore[union-attr]
    assert "'country'" in items[2].reason  # type: ignore[union-attr]


@pytest.mark.parametrize("header", ["event_id,account,account,time,product,quantity",
                                    "event_id,account,time,product,quantity, account"])  # fmt: skip
def test_a_duplicated_csv_header_column_is_refused(tmp_path: Path, header: str) -> None:
    """A CSV header naming a column twice is one rejection at line 1 naming the column."""
    path = tmp_path / "e.csv"
    path.write_text(f"{header}\ne1,1,2,2026-11-01T10:00:00Z,sms,1\n")
    items = _read(path, Format.CSV)
    assert len(items) == 1
    rejected = items[0]
    assert isinstance(rejected, RejectedLine)
    assert rejected.line == 1
    assert "'account'" in rejected.reason
    assert "twice" in rejected.reason


ROW: dict[str, object] = {
    "event_id": "e-1",
    "account": "42",
    "time": "2026-01-05T10:00:00Z",
    "product": "sms",
    "quantity": "1",
}


@pytest.mark.parametrize(
    "account",
    [" 42 ", "42 ", " 42", "4_2", "+42", "\u0664\u0662", "042", "", "4 2", "42\n", "0x2a", "-0"],
)
def test_account_strings_are_plain_ascii_integers(account: str) -> None:
    """account_as_int takes ASCII digits (optional '-'), nothing int() would also accept."""
    with pytest.raises(InvalidInputError) as caught:
        UsageEvent.from_dict({**ROW, "account": account}, account_as_int=True)
    assert "'account'" in str(caught.value)
    assert repr(account) in str(caught.value)


@pytest.mark.parametrize("account", ["42", "-7", "0", "9223372036854775807"])
def test_plain_account_strings_still_parse(account: str) -> None:
    """Plain integers parse to the same int as before."""
    event = UsageEvent.from_dict({**ROW, "account": account}, account_as_int=True)
    assert event.account == int(account)


@pytest.mark.parametrize(
    "quantity",
    [" 1", "1 ", "1_000", "+1", "\u0661", "1e3", "NaN", "Infinity", "-Infinity", ".5", "1.",
     "0x10", "", "1,5", "sNaN", "01"],
)  # fmt: skip
def test_quantity_strings_are_plain_ascii_decimals(quantity: str) -> None:
    """A quantity string is digits with at most one '.', ASCII, unpadded; else named and refused."""
    with pytest.raises(InvalidInputError) as caught:
        UsageEvent.from_dict({**ROW, "quantity": quantity})
    assert "'quantity'" in str(caught.value)
    assert repr(quantity) in str(caught.value)


@pytest.mark.parametrize(("quantity", "value"), [("1", 1), ("0.5", "0.5"), ("12.250", "12.250"),
                                                 ("0", 0), ("-3", -3)])  # fmt: skip
def test_plain_quantity_strings_still_parse(quantity: str, value: object) -> None:
    """Plain decimals parse exactly (a negative one needs a correction, as before)."""
    row = {**ROW, "quantity": quantity}
    if quantity.startswith("-"):
        row["correction"] = "true"
    assert UsageEvent.from_dict(row).quantity == Decimal(str(value))


@pytest.mark.parametrize("event_id", [" ", "   ", "\u3000", "\u00a0"])
def test_an_event_id_of_only_whitespace_is_refused(event_id: str) -> None:
    """An id that is only spaces names no event: refused with the field."""
    with pytest.raises(InvalidInputError, match="'event_id'"):
        UsageEvent.from_dict({**ROW, "event_id": event_id})


# --------------------------------------------------------------------------- other parsers


def test_a_deep_price_book_is_a_price_book_error() -> None:
    """A JSON or TOML price book nested 100,000 deep: PriceBookError, not RecursionError."""
    with pytest.raises(PriceBookError, match="nested"):
        PriceBook.from_json('{"products": ' + "[" * DEEP)
    with pytest.raises(PriceBookError, match="nested"):
        PriceBook.from_toml("a = " + "[" * DEEP)


def test_a_price_book_with_a_duplicated_json_key_is_refused() -> None:
    """Two "currency" keys in one JSON object: PriceBookError naming the key."""
    with pytest.raises(PriceBookError, match=r"'currency'.*twice"):
        PriceBook.from_json('{"currency": "USD", "currency": "EUR"}')


def test_a_deep_shard_map_is_a_shard_map_error() -> None:
    """ShardMap.from_json on a document nested 100,000 deep: ShardMapError."""
    with pytest.raises(ShardMapError, match="nested"):
        ShardMap.from_json("[" * DEEP)
    with pytest.raises(ShardMapError, match="nested"):
        ShardMap.from_json(b'{"runs": ' + b"[" * DEEP)


def test_a_deep_configuration_file_is_a_configuration_error(tmp_path: Path) -> None:
    """A shardbill.toml nested 100,000 deep: ConfigurationError naming the file."""
    file = tmp_path / "shardbill.toml"
    file.write_text("slots = " + "[" * DEEP)
    with pytest.raises(ConfigurationError, match="nested") as caught:
        Config.load(file)
    assert str(file) in str(caught.value)


def test_an_oversized_url_is_refused() -> None:
    """A URL longer than 4096 characters is an InvalidURLError saying the limit."""
    with pytest.raises(InvalidURLError, match="4096"):
        ConnectionURL.parse("mysql+pymysql://app@db/" + "d" * 5000)
