"""A charge's row deltas for every aggregate table, compiled once per table set (pure).

The writer turns every charge into one row delta per table: ``(table index,
key, deltas)``, every value validated against its column. Done naively, that
is a projection call and a type check per key column per table, and it was
the largest part of planning a batch. :class:`RowExtractor` does it in two
layers:

* **The reference path** (:meth:`RowExtractor.reference_rows`): each
  distinct (projection, column type) and each distinct measure value is
  computed and checked once per charge through the declared objects, and
  any failure raises the precise :class:`~shardbill.errors.InvalidInputError`
  (or :class:`~shardbill.errors.MoneyTypeError`) that names the column and
  the value.
* **The compiled path**: one Python function generated for the table set at
  construction, with the built-in projections (account, product, currency,
  day, month, dimension), column types and measures inlined as straight-line
  code. It only *accepts*: any value it is not sure of (a non-ASCII string,
  a naive time, a float amount, a custom projection that raises) makes it
  return ``None``, and the charge goes through the reference path, which
  gives the answer or the error. Valid charges never pay for the messages;
  invalid ones get exactly the reference path's. (So a projection of your
  own is called a second time for a charge it fails on: keep projections
  free of side effects.)

The compiled path also renders the charge's *canonical text*: the text whose
xxh3 is the fingerprint of a unit made of this one charge
(:func:`shardbill.writer.fingerprints.fingerprint`), from a template made once, so
the common unit (one charge, one slot) does not sort and ``repr`` its rows.

The generated source contains only names made here, integer literals and
references to objects held in its namespace (the projections, the tables'
names are never pasted into code); :attr:`RowExtractor.source` shows it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from shardbill import money
from shardbill.errors import ConfigurationError
from shardbill.tables.aggregates import (
    BIGINT_MAX,
    BIGINT_MIN,
    Account,
    AggregateTable,
    Amount,
    BigInt,
    ChargeLike,
    Count,
    Currency,
    Date,
    Day,
    Dimension,
    KeyValue,
    Measure,
    Month,
    Product,
    Quantity,
    VarChar,
    measure_range_error,
)

__all__ = ["RowDelta", "RowExtractor"]

RowDelta = tuple[int, tuple[KeyValue, ...], tuple[int, ...]]  # (table index, key, deltas)

_ATTRIBUTE_PROJECTIONS: dict[type, str] = {
    Account: "account",
    Product: "product",
    Currency: "currency",
}


class RowExtractor:
    """Computes the validated row deltas of a charge for every table.

    Args:
        tables: the aggregate tables, in the order the writer uses. Their
            names must be distinct.

    Example:
        >>> from shardbill.tables.catalog import billing_tables
        >>> extractor = RowExtractor(billing_tables())
        >>> len(extractor.tables)
        4
    """

    def __init__(self, tables: Sequence[AggregateTable]) -> None:
        self.tables = tuple(tables)
        names = [t.name for t in self.tables]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"aggregate table names must be distinct: {names}")
        parts: dict[tuple[object, object], int] = {}
        # A measure value is computed once per charge, and once more only where one
        # table stores it wide and another narrow: each part has its column's range.
        values: dict[tuple[object, bool], int] = {}
        self._key_parts: list[tuple[Any, Any, str]] = []  # (projection, column type, name)
        self._value_parts: list[Any] = []
        self._value_ranges: list[tuple[int, int, Measure]] = []  # (low, high, the first measure)
        self._layout: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        for table in self.tables:
            key_idx = []
            for column in table.keys:
                ident = (column.projection, column.type)
                if ident not in parts:
                    parts[ident] = len(self._key_parts)
                    self._key_parts.append((column.projection, column.type, column.name))
                key_idx.append(parts[ident])
            value_idx = []
            for measure in table.measures:
                ident_v = (measure.value, measure.wide)
                if ident_v not in values:
                    values[ident_v] = len(self._value_parts)
                    self._value_parts.append(measure.value)
                    self._value_ranges.append((measure.low, measure.high, measure))
                value_idx.append(values[ident_v])
            self._layout.append((tuple(key_idx), tuple(value_idx)))
        # The table of the first measure to declare each value part, for messages.
        self._measure_tables: dict[int, str] = {}
        for table, (_, placed) in zip(self.tables, self._layout, strict=True):
            for v in placed:
                self._measure_tables.setdefault(v, table.name)
        self._template = self._canonical_template()
        self.source, self._compiled = self._compile()

    # ------------------------------------------------------------------ public

    def rows(self, charge: ChargeLike) -> list[RowDelta]:
        """One row delta per table: ``(table index, key, deltas)``, validated.

        Raises:
            InvalidInputError: a key value or delta does not fit its column.
            MoneyTypeError: a float quantity or amount.
        """
        return self.extract(charge)[0]

    def extract(self, charge: ChargeLike) -> tuple[list[RowDelta], str]:
        """The row deltas and the canonical fingerprint text of ``charge`` alone.

        The text is what :func:`shardbill.writer.fingerprints.canonical_text` gives
        for these rows; its xxh3 is the fingerprint of a unit holding only
        this charge.

        Raises:
            InvalidInputError: a key value or delta does not fit its column.
            MoneyTypeError: a float quantity or amount.
        """
        try:
            fast = self._compiled(charge)
        except Exception:  # anything odd: the reference path decides
            fast = None
        if fast is not None:
            return fast
        keys, deltas = self._reference_parts(charge)
        parts = (*keys, *deltas)
        text = self._template % tuple([parts[j] for j in self._text_args])
        return self._assemble(keys, deltas), text

    def reference_rows(self, charge: ChargeLike) -> list[RowDelta]:
        """:meth:`rows` through the declared objects only (no compiled code)."""
        return self._assemble(*self._reference_parts(charge))

    # ------------------------------------------------------------------ reference path

    def _reference_parts(self, charge: ChargeLike) -> tuple[list[KeyValue], list[int]]:
        keys = [
            column_type.check(projection(charge), column=name)
            for projection, column_type, name in self._key_parts
        ]
        deltas = []
        for v, value in enumerate(self._value_parts):
            delta = value(charge)
            low, high, measure = self._value_ranges[v]
            if not low <= delta <= high:
                table = self._measure_tables[v]
                raise measure_range_error(charge.event_id, table, measure, delta)
            deltas.append(delta)
        return keys, deltas

    def _assemble(self, keys: Sequence[KeyValue], deltas: Sequence[int]) -> list[RowDelta]:
        return [
            (i, tuple(keys[k] for k in key_idx), tuple(deltas[v] for v in value_idx))
            for i, (key_idx, value_idx) in enumerate(self._layout)
        ]

    # ------------------------------------------------------------------ compiled path

    def _canonical_template(self) -> str:
        """``%``-template of ``repr(sorted(rows))``; its arguments are picked by ``_text_args``.

        The rows of one charge are one per table, and table names are
        distinct, so ``sorted`` orders them by table name alone.
        """
        nkeys = len(self._key_parts)
        pieces = []
        args: list[int] = []  # positions in (*key parts, *measure values)
        for i in sorted(range(len(self.tables)), key=lambda i: self.tables[i].name):
            key_idx, value_idx = self._layout[i]
            name = repr(self.tables[i].name).replace("%", "%%")
            pieces.append(
                f"({name}, {_tuple_template(len(key_idx))}, {_tuple_template(len(value_idx))})"
            )
            args.extend(key_idx)
            args.extend(nkeys + v for v in value_idx)
        self._text_args = tuple(args)
        return "[" + ", ".join(pieces) + "]"

    def _compile(self) -> tuple[str, Callable[[ChargeLike], tuple[list[RowDelta], str] | None]]:
        code = _Code()
        # The text's template takes every value rendered once (``%s``): ints as they are
        # (their str is their repr), text by repr, dates by a repr remembered per date.
        code.namespace.update(
            Decimal=Decimal,
            date=dt.date,
            TEMPLATE=self._template.replace("%r", "%s"),
            EXACT=money.EXACT,
            DATES={},
            remember=_remember,
        )
        code.emit("def extract(charge):")
        for k, (projection, column_type, name) in enumerate(self._key_parts):
            _read_key(code, f"k{k}", projection)
            _check_key(code, f"k{k}", column_type, name)
        for v, value in enumerate(self._value_parts):
            low, high, _ = self._value_ranges[v]
            _read_measure(code, f"m{v}", value, f"{int(low)} <= {{var}} <= {int(high)}")
        nkeys = len(self._key_parts)
        names = [f"k{k}" for k in range(nkeys)] + [f"m{v}" for v in range(len(self._value_parts))]
        rows = []
        for i, (key_idx, value_idx) in enumerate(self._layout):
            key = _tuple_source([names[k] for k in key_idx])
            deltas = _tuple_source([names[nkeys + v] for v in value_idx])
            rows.append(f"({i}, {key}, {deltas})")
        shown = {}
        for k, (_, column_type, _) in enumerate(self._key_parts):
            if k not in self._text_args:
                continue
            kind = type(column_type)
            if kind is BigInt:
                shown[k] = f"k{k}"
            elif kind is Date:
                shown[k] = f"r{k}"
                code.emit(f"    r{k} = DATES.get(k{k})")
                code.emit(f"    if r{k} is None:")
                code.emit(f"        r{k} = remember(DATES, k{k})")
            else:
                shown[k] = f"r{k}"
                code.emit(f"    r{k} = repr(k{k})")
        text_args = _tuple_source([shown.get(j, names[j]) for j in self._text_args])
        code.emit(f"    return [{', '.join(rows)}], TEMPLATE % {text_args}")
        source = "\n".join(code.lines) + "\n"
        exec(compile(source, "<shardbill.writer.extraction>", "exec"), code.namespace)  # noqa: S102 - see the module docstring
        return source, code.namespace["extract"]


class _Code:
    """The generated function's lines and the objects its names refer to."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.namespace: dict[str, Any] = {}
        self.zones: dict[object, str] = {}  # time zone -> the variable holding the local date

    def emit(self, line: str) -> None:
        self.lines.append(line)

    def constant(self, prefix: str, value: object) -> str:
        """A namespace name bound to ``value`` (values are never pasted into the source)."""
        name = f"{prefix}{len(self.namespace)}"
        self.namespace[name] = value
        return name


_BIGINT_RANGE = f"{BIGINT_MIN} <= {{var}} <= {BIGINT_MAX}"


def _read_key(code: _Code, var: str, projection: Any) -> None:
    kind = type(projection)
    if kind in _ATTRIBUTE_PROJECTIONS:
        code.emit(f"    {var} = charge.{_ATTRIBUTE_PROJECTIONS[kind]}")
    elif kind is Day or kind is Month:
        if not code.zones:
            code.emit("    moment = charge.time")
            code.emit("    if moment.tzinfo is None:")
            code.emit("        return None")
        zone = code.zones.get(projection.tz)
        if zone is None:
            zone = code.zones[projection.tz] = f"local{len(code.zones)}"
            tz = code.constant("TZ", projection.tz)
            code.emit(f"    {zone} = moment.astimezone({tz}).date()")
        code.emit(f"    {var} = {zone}" if kind is Day else f"    {var} = {zone}.replace(day=1)")
    elif kind is Dimension:
        key = code.constant("DIM", projection.key)
        default = code.constant("DEFAULT", projection.default)
        code.emit(f"    {var} = charge.dimensions.get({key}, {default})")
    else:
        code.emit(f"    {var} = {code.constant('PROJECTION', projection)}(charge)")


def _check_key(code: _Code, var: str, column_type: Any, name: str) -> None:
    kind = type(column_type)
    if kind is BigInt:
        code.emit(f"    if {var}.__class__ is not int or not {_BIGINT_RANGE.format(var=var)}:")
    elif kind is VarChar:
        length = int(column_type.length)
        code.emit(f"    if {var}.__class__ is not str or len({var}) > {length}:")
        code.emit("        return None")
        code.emit(f"    if not {var}.isascii():")  # the reference path checks the encoding
    elif kind is Date:
        code.emit(f"    if {var}.__class__ is not date:")
    else:
        checker = code.constant("TYPE", column_type)
        column = code.constant("COLUMN", name)
        code.emit(f"    {var} = {checker}.check({var}, column={column})")
        return
    code.emit("        return None")


def _read_measure(code: _Code, var: str, value: Any, in_range: str) -> None:
    kind = type(value)
    if kind is Count:
        code.emit(f"    {var} = 1")
        return
    if kind is Quantity or kind is Amount:
        code.emit(f"    raw = charge.{'quantity' if kind is Quantity else 'amount'}")
        code.emit("    if raw.__class__ is not Decimal:")
        code.emit("        return None")
        # EXACT, never the caller's thread context: a low precision there must not round.
        code.emit(f"    scaled = raw.scaleb({int(value.scale)}, EXACT)")
        code.emit(f"    {var} = int(scaled)")  # inf and NaN raise: the reference path explains
        code.emit(f"    if {var} != scaled:")
        code.emit("        return None")
    else:
        code.emit(f"    {var} = {code.constant('VALUE', value)}(charge)")
    code.emit(f"    if {var}.__class__ is not int or not {in_range.format(var=var)}:")
    code.emit("        return None")


def _remember(cache: dict[object, str], value: object) -> str:
    """``repr(value)``, kept in ``cache`` (bounded: cleared when it fills)."""
    text = repr(value)
    if len(cache) >= _REMEMBERED:
        cache.clear()
    cache[value] = text
    return text


_REMEMBERED = 4096  # distinct dates whose repr the compiled path keeps


def _tuple_template(width: int) -> str:
    return "(%r,)" if width == 1 else "(" + ", ".join(["%r"] * width) + ")"


def _tuple_source(names: Sequence[str]) -> str:
    return f"({names[0]},)" if len(names) == 1 else "(" + ", ".join(names) + ")"
