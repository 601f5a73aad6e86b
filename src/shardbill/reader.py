"""Reading aggregates back: routed point reads and parallel fan-out totals, exact Decimals.

* :meth:`Reader.rows` reads one account's rows (any table whose key holds
  the shard key) from the one shard that owns it, optionally from a replica.
* :meth:`Reader.totals` asks every shard in parallel for ``GROUP BY`` totals
  and merges them (sum, min, max as each measure declares).

Reads stay exact while a reshard moves slots (:mod:`shardbill.resharding`):
a slot in motion has rows on its target and, until they are merged, on its
source. A read takes the source's rows first, then, in one consistent
snapshot on the target, the target's rows and the move ledger's progress; a
source row the progress covers was merged into the target already and is
dropped, every other one is added. A shard that handed a slot over names
where it went, so a reader holding an older map follows it.

Measures come back as :class:`~decimal.Decimal` at their declared scale
(``Amount(scale=6)`` units 7500 -> ``Decimal("0.007500")``); counts as
``int``. Key values come back as declared: ``int``, ``str`` or
``datetime.date``. Filters are bound values; column names are checked against
the table spec before any SQL is built.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import attrs

from shardbill import money
from shardbill.aggregates import SLOT_COLUMN, Account, AggregateTable, Date, KeyValue, Projection
from shardbill.dialects.base import Dialect, MergeKind
from shardbill.dialects.detect import dialect_for
from shardbill.errors import ConfigurationError, InvalidInputError
from shardbill.providers.base import ConnectionProvider, DBAPICursor
from shardbill.shardmap import ShardMap
from shardbill.tables import SlotState, SystemTables

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
        system_tables: the ownership and move-ledger table names.
    """

    def __init__(
        self,
        *,
        shard_map: ShardMap,
        provider: ConnectionProvider,
        tables: Sequence[AggregateTable],
        shard_key: Sequence[Projection] = (Account(),),
        max_workers: int = 8,
        system_tables: SystemTables | None = None,
    ) -> None:
        self._holder = _MapHolder(shard_map)
        self._provider = provider
        self._tables = {t.name: t for t in tables}
        self._shard_key = tuple(shard_key)
        self._max_workers = max_workers
        self._system = system_tables or SystemTables()

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
        self._check_filters(spec, filters)
        slot = self.shard_map.slot_for(account)  # type: ignore[arg-type]
        shard = self.shard_map.owner(slot)
        for _ in range(4):  # follow forwarding addresses left by reshards
            state, peer = self._slot_state(shard, slot, replica=replica)
            if state == SlotState.GONE and peer:
                shard = peer
                continue
            break
        source_rows: dict[tuple[KeyValue, ...], list[int]] = {}
        if state == SlotState.INCOMING and peer:
            source_rows = self._raw_rows(peer, spec, filters, slots=(slot,), replica=replica)[slot]
        with self._snapshot(shard, replica=replica) as (cursor, dialect):
            progress = self._progress(cursor, dialect, spec.name, (slot,))
            own = self._raw_rows_in(cursor, dialect, spec, filters, slots=None)
        merged: dict[tuple[KeyValue, ...], list[int]] = {}
        for rows in own.values():
            _merge_into(merged, rows, spec)
        _merge_into(merged, _unmerged(source_rows, progress.get(slot), spec), spec)
        return [
            AggregateRow(
                key=dict(zip(spec.key_names, key, strict=True)),
                measures=self._measures(spec, values),
            )
            for key, values in sorted(merged.items())
        ]

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
        positions = [spec.key_names.index(c) for c in group_by]
        with ThreadPoolExecutor(max_workers=min(self._max_workers, len(shards))) as pool:
            for _ in range(5):
                # Phase 1: the rows of slots handed over, still on their sources.
                gone_slots: dict[str, dict[int, str]] = {}
                pending = list(shards)
                while pending:  # shards named as new owners by a newer map join the read
                    futures = {s: pool.submit(self._gone, s, replica) for s in pending}
                    gone_slots.update({s: f.result() for s, f in futures.items()})
                    peers = {p for g in gone_slots.values() for p in g.values()}
                    pending = sorted(peers - set(gone_slots))
                shards = sorted(gone_slots)
                moving_futures = [
                    (
                        s,
                        pool.submit(
                            self._raw_rows,
                            s,
                            spec,
                            filters,
                            slots=tuple(gone_slots[s]),
                            replica=replica,
                        ),
                    )
                    for s in shards
                    if gone_slots[s]
                ]
                moving = [(s, f.result()) for s, f in moving_futures]
                # Phase 2: per shard, one snapshot of its own rows and its merge progress.
                part_futures = [
                    pool.submit(
                        self._grouped,
                        s,
                        spec,
                        filters,
                        group_by=list(group_by),
                        gone=set(gone_slots[s]),
                        replica=replica,
                    )
                    for s in shards
                ]
                parts = [f.result() for f in part_futures]
                if all(
                    part[2] == set(gone_slots[s]) for s, part in zip(shards, parts, strict=True)
                ):
                    break
            else:  # pragma: no cover - five reshards in a row during one read
                raise InvalidInputError("slots kept moving during the read; read again")
        # Progress counts only on the slot's current target (the source's peer): a
        # finished record elsewhere belongs to an earlier move of the same slot.
        progress = {shard: part[1] for shard, part in zip(shards, parts, strict=True)}
        merged: dict[tuple[KeyValue, ...], list[int]] = {}
        for grouped, _, _ in parts:
            _merge_into(merged, grouped, spec)
        for source, shard_rows in moving:
            for slot, rows in shard_rows.items():
                target = gone_slots[source].get(slot)
                slot_progress = progress.get(target, {}).get(slot) if target else None
                for key, values in _unmerged(rows, slot_progress, spec).items():
                    _merge_into(merged, {tuple(key[i] for i in positions): values}, spec)
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
            out[measure.name] = money.from_minor_units(int(units), scale) if scale else int(units)
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
    ) -> list[str]:
        return [f"{quote(c)} = {placeholder}" for c in filters]

    @contextlib.contextmanager
    def _snapshot(self, shard: str, *, replica: bool) -> Iterator[tuple[DBAPICursor, Dialect]]:
        """One transaction whose reads all see the same committed state."""
        with self._provider.connection(shard, readonly=replica) as conn:
            dialect = dialect_for(conn)
            cursor = conn.cursor()
            try:
                if dialect.name != "sqlite":
                    # Pooled connections may carry the writer's READ COMMITTED.
                    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", ())
                yield cursor, dialect
            finally:
                cursor.close()

    def _slot_state(self, shard: str, slot: int, *, replica: bool) -> tuple[str, str | None]:
        with self._snapshot(shard, replica=replica) as (cursor, dialect):
            cursor.execute(
                f"SELECT state, peer FROM {dialect.quote(self._system.slots)} "
                f"WHERE {SLOT_COLUMN} = {int(slot)}",
                (),
            )
            row = cursor.fetchone()
        if row is None:
            return "", None
        return str(row[0]), (str(row[1]) if row[1] is not None else None)

    def _gone(self, shard: str, replica: bool) -> dict[int, str]:
        with self._snapshot(shard, replica=replica) as (cursor, dialect):
            return self._gone_in(cursor, dialect)

    def _gone_in(self, cursor: DBAPICursor, dialect: Dialect) -> dict[int, str]:
        cursor.execute(
            f"SELECT {SLOT_COLUMN}, peer FROM {dialect.quote(self._system.slots)} "
            f"WHERE state = {dialect.placeholder}",
            (SlotState.GONE.value,),
        )
        return {int(slot): str(peer) for slot, peer in cursor.fetchall()}

    def _progress(
        self, cursor: DBAPICursor, dialect: Dialect, table: str, slots: Sequence[int] | None
    ) -> dict[int, tuple[int, str | None]]:
        """Merge progress per incoming slot: (done, last merged key as JSON)."""
        sql = (
            f"SELECT {SLOT_COLUMN}, done, last_key FROM {dialect.quote(self._system.moves)} "
            f"WHERE table_name = {dialect.placeholder}"
        )
        if slots is not None:
            sql += f" AND {SLOT_COLUMN} IN ({', '.join(str(int(s)) for s in slots)})"
        cursor.execute(sql, (table,))
        return {
            int(slot): (int(done), str(last) if last is not None else None)
            for slot, done, last in cursor.fetchall()
        }

    def _raw_rows(
        self,
        shard: str,
        spec: AggregateTable,
        filters: Mapping[str, KeyValue],
        *,
        slots: tuple[int, ...],
        replica: bool,
    ) -> dict[int, dict[tuple[KeyValue, ...], list[int]]]:
        with self._snapshot(shard, replica=replica) as (cursor, dialect):
            found = self._raw_rows_in(cursor, dialect, spec, filters, slots=slots)
        return {slot: found.get(slot, {}) for slot in slots}

    def _raw_rows_in(
        self,
        cursor: DBAPICursor,
        dialect: Dialect,
        spec: AggregateTable,
        filters: Mapping[str, KeyValue],
        *,
        slots: Sequence[int] | None,
    ) -> dict[int, dict[tuple[KeyValue, ...], list[int]]]:
        q = dialect.quote
        columns = ", ".join(q(c) for c in (*spec.key_names, SLOT_COLUMN, *spec.measure_names))
        conditions = self._where(filters, dialect.placeholder, q)
        if slots is not None:
            conditions.append(f"{SLOT_COLUMN} IN ({', '.join(str(int(s)) for s in slots)})")
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        cursor.execute(
            f"SELECT {columns} FROM {q(spec.name)}{where}", [_bind(v) for v in filters.values()]
        )
        out: dict[int, dict[tuple[KeyValue, ...], list[int]]] = {}
        n = len(spec.keys)
        for row in cursor.fetchall():
            key = tuple(self._key_value(spec, c, row[i]) for i, c in enumerate(spec.key_names))
            out.setdefault(int(row[n]), {})[key] = [int(v) for v in row[n + 1 :]]
        return out

    def _grouped(
        self,
        shard: str,
        spec: AggregateTable,
        filters: Mapping[str, KeyValue],
        *,
        group_by: list[str],
        gone: set[int],
        replica: bool,
    ) -> tuple[dict[tuple[KeyValue, ...], list[int]], dict[int, tuple[int, str | None]], set[int]]:
        with self._snapshot(shard, replica=replica) as (cursor, dialect):
            still_gone = set(self._gone_in(cursor, dialect))
            progress = self._progress(cursor, dialect, spec.name, None)
            q = dialect.quote
            aggregates = ", ".join(f"{m.merge.value.upper()}({q(m.name)})" for m in spec.measures)
            head = ", ".join(q(c) for c in group_by)
            select = f"{head}, {aggregates}" if group_by else aggregates
            conditions = self._where(filters, dialect.placeholder, q)
            if gone:
                conditions.append(
                    f"{SLOT_COLUMN} NOT IN ({', '.join(str(int(s)) for s in sorted(gone))})"
                )
            where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
            sql = f"SELECT {select} FROM {q(spec.name)}{where}"
            if group_by:
                sql += f" GROUP BY {head}"
            cursor.execute(sql, [_bind(v) for v in filters.values()])
            fetched = cursor.fetchall()
        out: dict[tuple[KeyValue, ...], list[int]] = {}
        n = len(group_by)
        for row in fetched:
            if row[n] is None:  # an aggregate over no rows
                continue
            key = tuple(self._key_value(spec, c, row[i]) for i, c in enumerate(group_by))
            out[key] = [int(v) for v in row[n:]]
        return out, progress, still_gone


def _merge_into(
    merged: dict[tuple[KeyValue, ...], list[int]],
    rows: Mapping[tuple[KeyValue, ...], Sequence[int]],
    spec: AggregateTable,
) -> None:
    kinds = [m.merge for m in spec.measures]
    for key, values in rows.items():
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


def _unmerged(
    rows: Mapping[tuple[KeyValue, ...], list[int]],
    progress: tuple[int, str | None] | None,
    spec: AggregateTable,
) -> dict[tuple[KeyValue, ...], list[int]]:
    """The source rows the target has not merged yet (by the target's progress)."""
    if progress is None:
        return dict(rows)
    done, last = progress
    if done:
        return {}
    if last is None:
        return dict(rows)
    bound = tuple(_comparable(v) for v in json.loads(last))
    return {
        key: values for key, values in rows.items() if tuple(_comparable(v) for v in key) > bound
    }


def _comparable(value: object) -> object:
    return value.isoformat() if isinstance(value, dt.date) else value


def _bind(value: KeyValue) -> object:
    return value.isoformat() if isinstance(value, dt.date) else value
