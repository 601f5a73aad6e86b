"""Bounded, strict reading of JSON and TOML, shared by every parser of outside input.

Events (:mod:`shardbill.ingest`), price books (:mod:`shardbill.rules.pricebook`),
shard-map documents (:meth:`shardbill.ShardMap.from_json`) and the configuration
file (:mod:`shardbill.config`) read text that anyone with write access to a
file can shape. The standard parsers recurse once per nesting level, so a
document nested 100,000 deep raises :class:`RecursionError`, and they keep
the last of two equal keys silently. Here:

* a document longer than its caller's limit is refused before parsing;
* JSON nested deeper than :data:`MAX_DEPTH` is refused before parsing (a scan
  of the brackets outside strings, done only when the document has more
  brackets than the limit);
* a TOML document too deep for the parser is refused instead of crashing;
* a JSON object with a key twice is refused, naming the key.

Every refusal is an :class:`~shardbill.errors.InvalidInputError` (a
``ValueError``), which each caller turns into its own error with its own
context (a line number, a file name). Pure: no I/O.
"""

from __future__ import annotations

import functools
import json
import re
import tomllib
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from shardbill.errors import InvalidInputError

__all__ = ["MAX_DEPTH", "json_loads", "toml_loads"]

MAX_DEPTH = 32
"""The deepest nesting of arrays and objects a JSON document may have (events need 2)."""

# A JSON string (with escapes), unrolled so that long strings match in one pass.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_size(text: str | bytes, max_chars: int) -> None:
    if len(text) > max_chars:
        raise InvalidInputError(
            f"the document is {len(text)} characters long; the limit is {max_chars}: "
            "split it or check that it is the file you meant"
        )


def _check_depth(text: str, max_depth: int) -> None:
    if text.count("[") + text.count("{") <= max_depth:
        return  # cannot nest deeper than it has brackets: the common case costs two counts
    depth = 0
    for bracket in _BRACKETS.findall(_STRING.sub("", text)):
        if bracket in "[{":
            depth += 1
            if depth > max_depth:
                raise InvalidInputError(
                    f"the JSON is nested more than {max_depth} levels deep (arrays and objects "
                    "inside each other); nothing shardbill reads needs that many"
                )
        else:
            depth -= 1


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidInputError(
                    f"a JSON object has the key {_short(key)} twice; keep one "
                    "(readers disagree on which one wins)"
                )
            seen.add(key)
    return result


def json_loads(
    text: str | bytes,
    *,
    max_chars: int,
    max_depth: int = MAX_DEPTH,
    parse_float: Callable[[str], Any] = Decimal,
    parse_constant: Callable[[str], Any] | None = None,
) -> Any:
    """Parse JSON within bounds, refusing duplicated keys.

    Args:
        text: the document (bytes are decoded as :func:`json.loads` would).
        max_chars: the longest document accepted.
        max_depth: the deepest nesting accepted.
        parse_float: how numbers with a fraction are read (exactly, by default).
        parse_constant: called for ``NaN``, ``Infinity`` and ``-Infinity``
            (by default they are refused).

    Returns:
        The parsed value.

    Raises:
        InvalidInputError: too long, too deep, or a key twice in one object.
        ValueError: not JSON (:class:`json.JSONDecodeError`, or
            :class:`UnicodeDecodeError` for bytes).
    """
    _check_size(text, max_chars)
    if isinstance(text, bytes):
        text = text.decode(json.detect_encoding(text), "strict")
    _check_depth(text, max_depth)
    return _decoder(parse_float, parse_constant or _refuse_constant).decode(text)


@functools.lru_cache(maxsize=32)
def _decoder(
    parse_float: Callable[[str], Any], parse_constant: Callable[[str], Any]
) -> json.JSONDecoder:
    # One decoder per option set: json.loads with options builds a new one per call,
    # which costs as much as decoding a short event line.
    return json.JSONDecoder(
        object_pairs_hook=_no_duplicates, parse_float=parse_float, parse_constant=parse_constant
    )


def _refuse_constant(name: str) -> object:
    raise InvalidInputError(f"{name} is not a number shardbill can hold; give a finite number")


def toml_loads(
    text: str, *, max_chars: int, parse_float: Callable[[str], Any] = float
) -> dict[str, Any]:
    """Parse TOML within bounds (:mod:`tomllib` already refuses duplicated keys).

    Args:
        text: the document.
        max_chars: the longest document accepted.
        parse_float: how floats are read.

    Returns:
        The parsed document.

    Raises:
        InvalidInputError: too long, or nested too deeply for the parser.
        tomllib.TOMLDecodeError: not TOML.
    """
    _check_size(text, max_chars)
    try:
        return tomllib.loads(text, parse_float=parse_float)
    except RecursionError:
        raise InvalidInputError(
            "the TOML is nested too deeply (arrays or inline tables inside each other); "
            "nothing shardbill reads needs that"
        ) from None
