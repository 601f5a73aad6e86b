"""Declaration history: telling a replay after a schema change from a changed event (pure).

The ledger stores, with every ``(slot, event_id)``, a fingerprint of the
rows the event contributed under the declaration of the writer that applied
it (:mod:`shardbill.writer.fingerprints`). When ``shardbill migrate`` adds a
measure, a key column or a table, the same event gives other rows under the
new declaration, so its fingerprint changes, and a replay of an event
applied before the change would look like a *conflict* (the same id with
other content).

Each shard keeps the history of the declarations its ledger was written
under (``shardbill_declarations``: recorded by ``ensure_schema``, by every
writer's schema check and by ``migrate``; see :mod:`.store`). On a
fingerprint mismatch only, the writer asks a :class:`ReplayJudge` whether
the stored fingerprint is this delivery's fingerprint *as an older
declaration would have computed it*: the delivery's rows projected onto the
older declaration (the tables it lacks dropped, and in each table the key
columns and measures it lacks), in its column order. A match is a duplicate;
anything else stays a conflict.

Why a match is never a changed event taken for a duplicate: every charge
gives one row in every table of a declaration, and the canonical text names
each table and holds one tuple per key and per measures, so the text shows
the declaration's *shape* (its tables, and each table's number of key
columns and measures). A projected text equals the stored one only if the
stored one was made under a declaration of the same shape; when that shape
is one declaration's alone, the stored fingerprint was made under that
declaration, and the delivery agrees with the original on every value that
declaration recorded: the verdict a writer with it would have given. A
delivery that differs in anything it recorded is a conflict. Two
declarations of one shape but other columns (measures reordered, one column
swapped for another) make the shape ambiguous, and no projection onto
either is tried: such replays stay conflicts (never a dropped event).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Literal

import attrs

from shardbill.tables.aggregates import AggregateTable, check_identifier
from shardbill.writer.extraction import RowDelta
from shardbill.writer.fingerprints import digest, named_text

__all__ = ["Declaration", "Origin", "Recorded", "ReplayJudge", "TableShape"]

#: Where a recorded declaration came from.
Origin = Literal["declared", "derived"]


@attrs.frozen(kw_only=True)
class TableShape:
    """What one table's rows in a fingerprint hold: the table, its key columns, its measures.

    Attributes:
        name: the table.
        keys: its key columns, in the declared order (the order of a row's key).
        measures: its measures, in the declared order (the order of a row's deltas).
    """

    name: str
    keys: tuple[str, ...]
    measures: tuple[str, ...]


def _sorted_tables(tables: Iterable[TableShape]) -> tuple[TableShape, ...]:
    return tuple(sorted(tables, key=lambda t: t.name))


@attrs.frozen(kw_only=True)
class Declaration:
    """The part of a declaration a fingerprint depends on: each table's key and measure names.

    Example:
        >>> from shardbill.tables.catalog import billing_tables
        >>> declared = Declaration.of(billing_tables())
        >>> Declaration.parse(declared.describe()) == declared
        True
        >>> len(declared.version)
        16
    """

    tables: tuple[TableShape, ...] = attrs.field(converter=_sorted_tables)

    @classmethod
    def of(cls, tables: Sequence[AggregateTable]) -> Declaration:
        """The declaration of these aggregate tables."""
        return cls(
            tables=[
                TableShape(name=t.name, keys=t.key_names, measures=t.measure_names) for t in tables
            ]
        )

    def describe(self) -> str:
        """The canonical description: compact JSON, tables by name (ASCII, as names are)."""
        return json.dumps(
            {
                "tables": [
                    {"keys": list(t.keys), "measures": list(t.measures), "name": t.name}
                    for t in self.tables
                ]
            },
            separators=(",", ":"),
            sort_keys=True,
        )

    @property
    def version(self) -> str:
        """The declaration's id: 16 hex digits of its description's xxh3."""
        return digest(self.describe())

    @property
    def shape(self) -> tuple[tuple[str, int, int], ...]:
        """What a fingerprint's text shows of it: (table, key count, measure count) per table."""
        return tuple((t.name, len(t.keys), len(t.measures)) for t in self.tables)

    def without(
        self, *, tables: Iterable[str] = (), columns: Iterable[tuple[str, str]] = ()
    ) -> Declaration:
        """This declaration less some tables and some ``(table, column)`` keys or measures."""
        gone = set(tables)
        dropped = set(columns)
        return Declaration(
            tables=[
                TableShape(
                    name=t.name,
                    keys=tuple(k for k in t.keys if (t.name, k) not in dropped),
                    measures=tuple(m for m in t.measures if (t.name, m) not in dropped),
                )
                for t in self.tables
                if t.name not in gone
            ]
        )

    @classmethod
    def parse(cls, text: str) -> Declaration:
        """Read a description back.

        Raises:
            ValueError: ``text`` is not a description :meth:`describe` makes.
        """
        try:
            data = json.loads(text)
            shapes = [
                TableShape(
                    name=check_identifier(t["name"], what="table"),
                    keys=tuple(check_identifier(k, what="key column") for k in t["keys"]),
                    measures=tuple(check_identifier(m, what="measure") for m in t["measures"]),
                )
                for t in data["tables"]
            ]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not a declaration description: {text[:80]!r} ({exc})") from exc
        declared = cls(tables=shapes)
        if declared.describe() != text:
            raise ValueError(f"not a canonical declaration description: {text[:80]!r}")
        return declared


@attrs.frozen(kw_only=True)
class Recorded:
    """One declaration in a shard's history.

    Attributes:
        declaration: the declaration.
        recorded_at: when it was first recorded on the shard (Unix seconds).
        origin: ``"declared"`` (a writer's or ``migrate``'s own declaration) or
            ``"derived"`` (inferred by ``migrate`` for a shard that had no
            history: the new declaration less what the migration added).
    """

    declaration: Declaration
    recorded_at: int
    origin: Origin = "declared"


class _Projection:
    """The current declaration's rows as an older declaration would have made them."""

    def __init__(self, current: Sequence[AggregateTable], older: Declaration) -> None:
        index = {t.name: i for i, t in enumerate(current)}
        self.plan: dict[int, tuple[str, tuple[int, ...], tuple[int, ...]]] = {}
        for shape in older.tables:
            i = index[shape.name]  # KeyError: the current declaration lacks the table
            keys, measures = current[i].key_names, current[i].measure_names
            self.plan[i] = (
                shape.name,
                tuple(keys.index(k) for k in shape.keys),  # ValueError: lacks a column
                tuple(measures.index(m) for m in shape.measures),
            )

    def fingerprint(self, rows: Sequence[RowDelta]) -> str:
        plan = self.plan
        named = []
        for t, key, deltas in rows:
            found = plan.get(t)
            if found is not None:
                name, at_keys, at_measures = found
                named.append(
                    (
                        name,
                        tuple([key[j] for j in at_keys]),
                        tuple([deltas[j] for j in at_measures]),
                    )
                )
        return digest(named_text(named))


class ReplayJudge:
    """Whether a stored fingerprint is a delivery's under an older declaration (see above).

    Args:
        current: the writer's aggregate tables (its declaration).
        history: the declarations recorded on the shard.

    Example:
        >>> import attrs
        >>> from shardbill.tables.aggregates import Measure, Quantity
        >>> from shardbill.tables.catalog import billing_tables
        >>> old = billing_tables()
        >>> grown = [attrs.evolve(t, measures=(*t.measures, Measure(name="units",
        ...          value=Quantity(scale=0)))) if t.name == "usage_daily" else t for t in old]
        >>> judge = ReplayJudge(grown, [Declaration.of(old), Declaration.of(grown)])
        >>> [d.version == Declaration.of(old).version for d in judge.older]
        [True]
    """

    def __init__(self, current: Sequence[AggregateTable], history: Iterable[Declaration]) -> None:
        mine = Declaration.of(current)
        known = {d.version: d for d in (mine, *history)}
        shapes = Counter(d.shape for d in known.values())
        self.ambiguous: tuple[Declaration, ...] = tuple(
            d for d in known.values() if d.version != mine.version and shapes[d.shape] > 1
        )
        """Older declarations whose shape another shares: never projected onto."""
        older: list[Declaration] = []
        projections: list[_Projection] = []
        for version, declared in sorted(known.items()):
            if version == mine.version or shapes[declared.shape] > 1:
                continue
            try:
                projections.append(_Projection(current, declared))
            except (KeyError, ValueError):
                continue  # it holds a table or column the current one lacks: not computable
            older.append(declared)
        self.older: tuple[Declaration, ...] = tuple(older)
        """The older declarations a delivery's rows can be projected onto."""
        self._projections = tuple(projections)

    def recognises(self, stored: str, rows: Sequence[RowDelta]) -> bool:
        """Whether ``stored`` is the fingerprint of ``rows`` under one of :attr:`older`.

        Args:
            stored: the fingerprint in the ledger.
            rows: every row delta the delivery's fingerprint covers, under the
                current declaration (for an identity claim, the whole event's).
        """
        return any(p.fingerprint(rows) == stored for p in self._projections)
