"""Fuzzing every parser of outside input: it answers with its own error, never a crash.

Bounded for CI (``SHARDBILL_FUZZ_EXAMPLES`` examples per test, default 100).
The long run is documented in docs/howto/run-the-tests.md::

    SHARDBILL_FUZZ_EXAMPLES=20000 python -m pytest tests/test_fuzz_parsers.py -p no:cacheprovider
"""

from __future__ import annotations

import contextlib
import json
import os
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardbill.config import Config
from shardbill.errors import (
    ConfigurationError,
    InvalidURLError,
    PriceBookError,
    ShardbillError,
    ShardMapError,
)
from shardbill.ingest import FileEvent, Format, RejectedLine, Repeat, read_events
from shardbill.providers import ConnectionURL
from shardbill.rules import PriceBook, UsageEvent
from shardbill.shardmap import ShardMap

pytestmark = pytest.mark.property

FUZZ = settings(
    max_examples=int(os.environ.get("SHARDBILL_FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=20)
    | st.sampled_from(["42", " 42", "4_2", "+42", "\u0664\u0662", "1e3", "NaN", "0.5", ""]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
FIELDS = ["event_id", "account", "time", "product", "quantity", "dimensions", "correction"]
events = st.dictionaries(
    st.sampled_from([*FIELDS, "dimensions.country", "colour"]) | st.text(max_size=6),
    json_values | st.sampled_from(["2026-01-05T10:00:00Z", "sms", "e-1"]),
    max_size=9,
)
# Text made mostly of the characters that steer each grammar.
grammar_text = st.text(
    alphabet=st.sampled_from([*"{}[]\",:=\n\\ \t#'.", *string.ascii_letters[:8], "\x00"])
    | st.characters(),
    max_size=300,
)


@FUZZ
@given(data=events, as_int=st.booleans())
def test_from_dict_answers_with_a_shardbill_error(data: dict[str, object], as_int: bool) -> None:
    """Any mapping gives an event or a ShardbillError, nothing else."""
    with contextlib.suppress(ShardbillError):
        UsageEvent.from_dict(data, account_as_int=as_int)


@FUZZ
@given(
    lines=st.lists(
        st.one_of(
            events.map(lambda d: json.dumps(d, default=str)),
            grammar_text,
            st.integers(1, 3000).map(lambda n: "[" * n),
        ),
        max_size=6,
    )
)
def test_jsonl_reading_never_crashes_and_keeps_every_line(tmp_path: Path, lines: list[str]) -> None:
    """Every non-blank line of a JSON Lines file comes out as one item with its number."""
    path = tmp_path / "fuzz.jsonl"
    raw = "\n".join(line.replace("\n", " ").replace("\r", " ") for line in lines) + "\n"
    path.write_bytes(raw.encode("utf-8", errors="surrogatepass"))
    items = list(read_events(path, fmt=Format.JSONL, account_as_int=True))
    for item in items:
        assert isinstance(item, FileEvent | Repeat | RejectedLine)
    physical = path.read_bytes().split(b"\n")
    expected = [n for n, line in enumerate(physical, 1) if line.strip(b" \t\r\n")]
    assert [item.line for item in items] == expected


@FUZZ
@given(text=grammar_text)
def test_csv_reading_never_crashes(tmp_path: Path, text: str) -> None:
    """Any CSV text gives items with line numbers in the file, never an exception."""
    path = tmp_path / "fuzz.csv"
    path.write_bytes(
        ("event_id,account,time,product,quantity\n" + text).encode("utf-8", "surrogatepass")
    )
    lines = path.read_bytes().count(b"\n") + 1
    for item in read_events(path, fmt=Format.CSV, account_as_int=True):
        assert 1 <= item.line <= lines


@FUZZ
@given(text=grammar_text | json_values.map(json.dumps))
def test_price_book_parsers_answer_with_price_book_errors(text: str) -> None:
    """Any text is a price book or a PriceBookError, in JSON and in TOML."""
    for parse in (PriceBook.from_json, PriceBook.from_toml):
        with contextlib.suppress(PriceBookError):
            parse(text)


@FUZZ
@given(text=grammar_text | json_values.map(json.dumps))
def test_shard_map_json_answers_with_shard_map_errors(text: str) -> None:
    """Any text (or its UTF-8 bytes) is a shard map or a ShardMapError."""
    for document in (text, text.encode("utf-8", "surrogatepass")):
        with contextlib.suppress(ShardMapError):
            ShardMap.from_json(document)


@FUZZ
@given(text=grammar_text)
def test_configuration_toml_answers_with_configuration_errors(tmp_path: Path, text: str) -> None:
    """Any text is a configuration or a ConfigurationError."""
    with contextlib.suppress(ConfigurationError):
        Config.from_toml(text, source="fuzz.toml", base=tmp_path)


@FUZZ
@given(
    text=st.one_of(
        grammar_text,
        st.builds(
            lambda scheme, rest: f"{scheme}://{rest}",
            st.sampled_from(["mysql+pymysql", "mysql+mysqldb", "sqlite", "MYSQL+PYMYSQL"]),
            st.text(alphabet=st.sampled_from([*"@:/?&=%[]#.a1 ", "\u0664"]), max_size=40),
        ),
    )
)
def test_url_parsing_answers_with_invalid_url_errors(text: str) -> None:
    """Any text is a URL or an InvalidURLError."""
    with contextlib.suppress(InvalidURLError):
        ConnectionURL.parse(text)
