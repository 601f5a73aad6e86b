"""Reading aggregates back: routed point reads and parallel fan-out totals, exact Decimals.

* :meth:`Reader.rows` reads one account's rows (any table whose key holds
  the shard key) from the one shard that owns it, optionally from a replica.
* :meth:`Reader.totals` asks every shard in parallel for ``GROUP BY`` totals
  and merges them (sum, min, max as each measure declares).

Measures come back as :class:`~decimal.Decimal` at their declared scale
(``Amount(scale=6)`` units 7500 -> ``Decimal("0.007500")``); counts as
``int``. Key values come back as declared: ``int``, ``str`` or
``datetime.date``. Filters are bound values; column names are checked against
the table spec before any SQL is built.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import attrs

from shardbill.aggregates import Account, AggregateTable, Date, KeyValue, Projection
from shardbill.dialects.base import MergeKind
from shardbill.dialects.detect import dialect_for
from shardbill.errors import ConfigurationError, InvalidInputError
from shardbill.providers.base import ConnectionProvider
from shardbill.shardmap import ShardMap

__all__ = ["AggregateRow", "Reader"]

Measure = Decimal | int


@attrs.frozen(kw_only=True)
class AggregateRow:
    """One aggregate row: its key columns and its measures, exact."""

    key: Mapping[str, KeyValue]
    measures: Mapping[str, Measure]


class _MapHolder:
    def __init__(self, shard_map: ShardMap) -> None:
        self.map = shard_map


class Reader:
    """Reads aggregate tables across the shards of a shard map.

    Args:
        shard_map: the map that routes point reads.
        provider: lends connections (``readonly=True`` loans may go to replicas).
        tables: the aggregate tables that can be read.
        shard_key: the projections that make the shard key (default: account).
        max_workers: shards read in parallel by :meth:`totals`.
    """

    def __init__(
        self,
        *,
        shard_map: ShardMap,
        provider: ConnectionProvider,
        tables: Sequence[AggregateTable],
        shard_key: Sequence[Projection] = (Account(),),
        max_workers: int = 8,
    ) -> None:
        self._holder = _MapHolder(shard_map)
        self._provider = provider
        self._tables = {t.name: t for t in tables}
        self._shard_key = tuple(shard_key)
        self._max_workers = max_workers

    @property
    def shard_map(self) -> ShardMap:
        """The map routing point reads."""
        return self._holder.map

    def use_map(self, shard_map: ShardMap) -> None:
        """Route with ``shard_map`` from now on (e.g. after a reshard finished)."""
        self._holder.map = shard_map

    def _table(self, name: str) -> AggregateTable:
        try:
            return self._tables[name]
        except KeyError:
            raise ConfigurationError(
                f"unknown aggregate table {name!r}; known: {sorted(self._tables)}"
            ) from None

    def _shard_key_column(self, table: AggregateTable) -> str:
        if len(self._shard_key) != 1:
            raise ConfigurationError("point reads by account need a one-part shard key")
        for column in table.keys:
            if column.projection == self._shard_key[0]:
                return column.name
        raise ConfigurationError(f"table {table.name!r} has no shard key column")

    def rows(
        self,
        table: str,
        account: KeyValue,
        *,
        where: Mapping[str, KeyValue] | None = None,
        replica: bool = False,
    ) -> list[AggregateRow]:
        """An account's rows of ``table`` (optionally filtered), from the shard that owns it.

        Args:
            table: the table name.
            account: the shard key value (the account id).
            where: more key columns to filter on, ``column -> value``.
            replica: read from a replica if the provider has one (may lag).

        Example:
            >>> reader.rows("usage_monthly", 42, where={"month": nov})  # doctest: +SKIP
        """
        spec = self._table(table)
        filters = {self._shard_key_column(spec): account, **(where or {})}
        shard = self.shard_map.shard_for(account)  # type: ignore[arg-type]
        return self._select(shard, spec, filters, replica=replica)

    def totals(
        self,
        table: str,
        *,
        group_by: Sequence[str],
        where: Mapping[str, KeyValue] | None = None,
        replica: bool = False,
    ) -> dict[tuple[KeyValue, ...], dict[str, Measure]]:
        """Totals over every shard, grouped by key columns, merged per measure kind.

        Example:
            >>> reader.totals("usage_monthly", group_by=["product"],
            ...               where={"month": date(2026, 11, 1)})  # doctest: +SKIP
            {('sms',): {'quantity': Decimal('1200.000000'), 'amount': ..., 'charges': 900}}
        """
        spec = self._table(table)
        keys = {c.name for c in spec.keys}
        for column in group_by:
            if column not in keys:
                raise InvalidInputError(
                    f"group_by column {column!r} is not a key column of {table!r}; "
                    f"choose from {sorted(keys)}"
                )
        filters = dict(where or {})
        self._check_filters(spec, filters)
        shards = sorted(self.shard_map.shards)
        with ThreadPoolExecutor(max_workers=min(self._max_workers, len(shards))) as pool:
            parts = list(
                pool.map(
                    lambda s: self._grouped(s, spec, list(group_by), filters, replica=replica),
                    shards,
                )
            )
        merged: dict[tuple[KeyValue, ...], list[int]] = {}
        kinds = [m.merge for m in spec.measures]
        for part in parts:
            for key, values in part.items():
                current = merged.get(key)
                if current is None:
                    merged[key] = list(values)
                    continue
                for i, kind in enumerate(kinds):
                    if kind is MergeKind.SUM:
                        current[i] += values[i]
                    elif kind is MergeKind.MIN:
                        current[i] = min(current[i], values[i])
                    else:
                        current[i] = max(current[i], values[i])
        return {key: self._measures(spec, values) for key, values in sorted(merged.items())}

    # ------------------------------------------------------------------ internals

    def _check_filters(self, spec: AggregateTable, filters: Mapping[str, KeyValue]) -> None:
        columns = {c.name: c for c in spec.keys}
        for name, value in filters.items():
            column = columns.get(name)
            if column is None:
                raise InvalidInputError(
                    f"filter column {name!r} is not a key column of {spec.name!r}; "
                    f"choose from {sorted(columns)}"
                )
            column.type.check(value, column=name)

    def _measures(self, spec: AggregateTable, values: Sequence[int]) -> dict[str, Measure]:
        out: dict[str, Measure] = {}
        for measure, units in zip(spec.measures, values, strict=True):
            scale = measure.value.scale
            out[measure.name] = Decimal(int(units)).scaleb(-scale) if scale else int(units)
        return out

    def _key_value(self, spec: AggregateTable, name: str, raw: object) -> KeyValue:
        column = next(c for c in spec.keys if c.name == name)
        if isinstance(column.type, Date):
            if isinstance(raw, dt.date):
                return raw
            return dt.date.fromisoformat(str(raw))
        if isinstance(raw, bytes):
            return raw.decode("utf-8")
        return raw  # type: ignore[return-value]

    def _where(
        self, filters: Mapping[str, KeyValue], placeholder: str, quote: Callable[[str], str]
    ) -> str:
        if not filters:
            return ""
        return " WHERE " + " AND ".join(f"{quote(c)} = {placeholder}" for c in filters)

    def _select(
        self, shard: str, spec: AggregateTable, filters: Mapping[str, KeyValue], *, replica: bool
    ) -> list[AggregateRow]:
        self._check_filters(spec, filters)
        with self._provider.connection(shard, readonly=replica) as conn:
            dialect = dialect_for(conn)
            q = dialect.quote
            columns = ", ".join(q(c) for c in (*spec.key_names, *spec.measure_names))
            sql = (
                f"SELECT {columns} FROM {q(spec.name)}"
                f"{self._where(filters, dialect.placeholder, q)}"
                f" ORDER BY {', '.join(q(c) for c in spec.key_names)}"
            )
            cursor = conn.cursor()
            try:
                cursor.execute(sql, [_bind(v) for v in filters.values()])
                fetched = cursor.fetchall()
            finally:
                cursor.close()
        n = len(spec.keys)
        return [
            AggregateRow(
                key={
                    name: self._key_value(spec, name, row[i])
                    for i, name in enumerate(spec.key_names)
                },
                measures=self._measures(spec, [int(v) for v in row[n:]]),
            )
            for row in fetched
        ]

    def _grouped(
        self,
        shard: str,
        spec: AggregateTable,
        group_by: list[str],
        filters: Mapping[str, KeyValue],
        *,
        replica: bool,
    ) -> dict[tuple[KeyValue, ...], list[int]]:
        with self._provider.connection(shard, readonly=replica) as conn:
            dialect = dialect_for(conn)
            q = dialect.quote
            aggregates = ", ".join(f"{m.merge.value.upper()}({q(m.name)})" for m in spec.measures)
            head = ", ".join(q(c) for c in group_by)
            select = f"{head}, {aggregates}" if group_by else aggregates
            sql = (
                f"SELECT {select} FROM {q(spec.name)}{self._where(filters, dialect.placeholder, q)}"
            )
            if group_by:
                sql += f" GROUP BY {head}"
            cursor = conn.cursor()
            try:
                cursor.execute(sql, [_bind(v) for v in filters.values()])
                fetched = cursor.fetchall()
            finally:
                cursor.close()
        out: dict[tuple[KeyValue, ...], list[int]] = {}
        n = len(group_by)
        for row in fetched:
            if row[n] is None:  # an aggregate over no rows
                continue
            key = tuple(self._key_value(spec, c, row[i]) for i, c in enumerate(group_by))
            out[key] = [int(v) for v in row[n:]]
        return out


def _bind(value: KeyValue) -> object:
    return value.isoformat() if isinstance(value, dt.date) else value
