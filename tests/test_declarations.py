"""The declaration history: a replay after a schema change is recognised, a change never (pure).

The writer's side (SQLite and MariaDB) is in tests/test_migrate.py; these
tests hold the judge itself against fingerprints computed independently,
by a :class:`RowExtractor` built with the older declaration.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from decimal import Decimal

import attrs
import pytest

from shardbill import ShardMap
from shardbill.declarations import Declaration, ReplayJudge, TableShape
from shardbill.rules import Charge, PricedEvent, comms
from shardbill.tables.aggregates import (
    Account,
    AggregateTable,
    BigInt,
    Count,
    Dimension,
    KeyColumn,
    Measure,
    Quantity,
    VarChar,
)
from shardbill.tables.catalog import billing_tables
from shardbill.workloads.synthetic import Traffic
from shardbill.writer.extraction import RowDelta, RowExtractor
from shardbill.writer.fingerprints import digest, fingerprint
from shardbill.writer.planning import Unit, classify, plan_batch
from tests.support.clock import recent_start

OLD = billing_tables()
UNITS = Measure(name="units", value=Quantity(scale=0))
CHANNEL = KeyColumn(
    name="channel", type=VarChar(8), projection=Dimension("channel", default="-"), existing="?"
)
PER_ACCOUNT = AggregateTable(
    name="usage_by_account",
    keys=(KeyColumn(name="account_id", type=BigInt(), projection=Account()),),
    measures=(Measure(name="charges", value=Count()),),
)


def _grow(tables: Sequence[AggregateTable], kind: str) -> tuple[AggregateTable, ...]:
    if kind == "measure":
        return tuple(
            attrs.evolve(t, measures=(t.measures[0], UNITS, *t.measures[1:]))  # not at the end
            if t.name == "usage_daily"
            else t
            for t in tables
        )
    if kind == "key-column":
        return tuple(
            attrs.evolve(t, keys=(CHANNEL, *t.keys)) if t.name == "usage_monthly" else t
            for t in tables
        )
    assert kind == "table"
    return (PER_ACCOUNT, *tables)  # the table order does not matter either


def _charges(seed: int, n: int = 200) -> list[Charge]:
    events = Traffic(model="skewed", events=n, seed=seed, accounts=30, start=recent_start())
    rng = random.Random(seed)
    charges = []
    for c in comms.engine().price_batch(list(events.distinct())).charges:
        channel = rng.choice(["web", "api", None])
        dims = {**c.dimensions, "channel": channel} if channel else dict(c.dimensions)
        charges.append(attrs.evolve(c, dimensions=dims))
    return charges


def _units(charges: list[Charge], seed: int) -> list[list[Charge]]:
    """The charges cut into groups of 1 to 3 (a unit of one or several charges)."""
    rng = random.Random(seed)
    groups, at = [], 0
    while at < len(charges):
        size = rng.randint(1, 3)
        groups.append(charges[at : at + size])
        at += size
    return groups


def _rows(extractor: RowExtractor, group: list[Charge]) -> list[RowDelta]:
    return [row for c in group for row in extractor.rows(c)]


KINDS = ["measure", "key-column", "table"]


@pytest.mark.parametrize("kinds", [[k] for k in KINDS] + [KINDS])
def test_a_unit_applied_under_an_older_declaration_is_recognised(kinds: list[str]) -> None:
    """Every unit's fingerprint under each older declaration of a chain is recognised from
    its rows under the newest one; the newest one's own fingerprint needs no judge."""
    chain = [OLD]
    for kind in kinds:
        chain.append(_grow(chain[-1], kind))
    current = chain[-1]
    judge = ReplayJudge(current, [Declaration.of(t) for t in chain])
    assert len(judge.older) == len(kinds)
    new = RowExtractor(current)
    for older in chain[:-1]:
        old = RowExtractor(older)
        for group in _units(_charges(3), seed=4):
            stored = fingerprint(_rows(old, group), older)
            assert judge.recognises(stored, _rows(new, group))
            _, text = old.extract(group[0])  # the compiled path's template, one charge
            assert judge.recognises(digest(text), new.rows(group[0]))


@pytest.mark.parametrize("kind", KINDS)
def test_a_changed_delivery_is_not_recognised(kind: str) -> None:
    """A delivery whose content differs in anything the older declaration recorded."""
    current = _grow(OLD, kind)
    judge = ReplayJudge(current, [Declaration.of(OLD)])
    old, new = RowExtractor(OLD), RowExtractor(current)
    changes = {
        "quantity": lambda c: attrs.evolve(c, quantity=c.quantity + 1),
        "amount": lambda c: attrs.evolve(c, amount=c.amount + Decimal("0.000001")),
        "account": lambda c: attrs.evolve(c, account=c.account + 1),
        "product": lambda c: attrs.evolve(c, product="voice" if c.product != "voice" else "sms"),
        "country": lambda c: attrs.evolve(c, dimensions={**c.dimensions, "country": "ZZ"}),
    }
    tried = 0
    for group in _units(_charges(5), seed=6):
        stored = fingerprint(_rows(old, group), OLD)
        for name, change in changes.items():
            changed = [change(group[0]), *group[1:]]
            if name == "country" and group[0].dimensions.get("country", "--") == "ZZ":
                continue
            assert not judge.recognises(stored, _rows(new, changed)), (name, group)
            tried += 1
        dropped = group[:-1]  # one charge fewer
        assert not judge.recognises(stored, _rows(new, dropped))
    assert tried > 400


def test_a_change_only_the_newer_declaration_records() -> None:
    """Under the older declaration a value it never recorded cannot tell two deliveries apart
    (the verdict its writer gave before the change); under the newer one it does."""
    current = _grow(OLD, "key-column")
    judge = ReplayJudge(current, [Declaration.of(OLD), Declaration.of(current)])
    old, new = RowExtractor(OLD), RowExtractor(current)
    charge = _charges(7, 20)[0]
    other = attrs.evolve(charge, dimensions={**charge.dimensions, "channel": "fax"})
    before = fingerprint(old.rows(charge), OLD)
    assert judge.recognises(before, new.rows(other))  # applied before: a duplicate, as it was
    after = fingerprint(new.rows(charge), current)  # applied under the new declaration
    assert fingerprint(new.rows(other), current) != after
    assert not judge.recognises(after, new.rows(other))  # a conflict


def test_declarations_of_one_shape_are_never_projected_onto() -> None:
    """Measures reordered: a text of either could be the other's with values swapped."""
    daily = next(t for t in OLD if t.name == "usage_daily")
    swapped = attrs.evolve(
        daily, measures=(daily.measures[1], daily.measures[0], *daily.measures[2:])
    )
    current = tuple(swapped if t is daily else t for t in OLD)
    judge = ReplayJudge(current, [Declaration.of(OLD)])
    assert judge.older == ()
    assert judge.ambiguous == (Declaration.of(OLD),)
    grown = _grow(current, "measure")  # a later declaration does not make them unambiguous
    later = ReplayJudge(grown, [Declaration.of(OLD), Declaration.of(current)])
    assert later.older == ()
    charge = _charges(8, 20)[0]
    stored = fingerprint(RowExtractor(OLD).rows(charge), OLD)
    assert not later.recognises(stored, RowExtractor(grown).rows(charge))


def test_an_older_declaration_the_current_one_cannot_compute_is_skipped() -> None:
    """A table or a column the current declaration lacks: no projection, no match."""
    current = tuple(t for t in OLD if t.name != "account_balance")
    judge = ReplayJudge(current, [Declaration.of(OLD)])
    assert judge.older == ()
    fewer = tuple(
        attrs.evolve(t, measures=t.measures[:1]) if t.name == "usage_daily" else t for t in OLD
    )
    assert ReplayJudge(fewer, [Declaration.of(OLD)]).older == ()


def test_the_description_is_canonical_and_pinned() -> None:
    """Descriptions are stored on the shards: their text and version never change."""
    pinned = Declaration(
        tables=[
            TableShape(name="t", keys=("b", "a"), measures=("x",)),
            TableShape(name="s", keys=("k",), measures=("y", "z")),
        ]
    )
    assert pinned.describe() == (
        '{"tables":[{"keys":["k"],"measures":["y","z"],"name":"s"},'
        '{"keys":["b","a"],"measures":["x"],"name":"t"}]}'
    )
    assert pinned.version == "dc990a29e999657a"
    declared = Declaration.of(OLD)
    assert declared.version == Declaration.of(tuple(reversed(OLD))).version
    assert Declaration.parse(declared.describe()) == declared
    for bad in ("", "[]", '{"tables": []}', '{"tables":[{"name":"x y","keys":[],"measures":[]}]}'):
        with pytest.raises(ValueError, match="declaration description"):
            Declaration.parse(bad)
    assert declared.without(tables=["account_balance"], columns=[("usage_daily", "amount")]) == (
        Declaration(
            tables=[
                attrs.evolve(t, measures=tuple(m for m in t.measures if m != "amount"))
                if t.name == "usage_daily"
                else t
                for t in declared.tables
                if t.name != "account_balance"
            ]
        )
    )
    assert isinstance(declared.tables[0], TableShape)


def test_every_unit_signs_the_rows_its_fingerprint_covers() -> None:
    """Unit.signed: an identity claim's are the whole event's, another unit's its own."""
    shard_map = ShardMap.create(["a", "b", "c"], slots=64)
    charges = _charges(9, 150)
    events = []
    for n, group in enumerate(_units(charges, seed=10)):
        parts = [
            attrs.evolve(c, event_id=f"multi-{n}", part=i, parts=len(group))
            for i, c in enumerate(group)
        ]
        events.append(PricedEvent(event_id=f"multi-{n}", time=parts[0].time, charges=tuple(parts)))

    def locate(key: object) -> tuple[int, str]:
        slot = shard_map.slot_for(key)  # type: ignore[arg-type]
        return slot, shard_map.owner(slot)

    plan = plan_batch(
        events, tables=OLD, shard_key=(Account(),), locate=locate, home_slot=shard_map.slot_for
    )
    extractor = RowExtractor(OLD)
    whole = {e.event_id: [r for c in e.charges for r in extractor.rows(c)] for e in events}
    spanning = 0
    for unit in plan.units:
        assert fingerprint(unit.signed, OLD) == unit.fingerprint
        if unit.home:
            assert sorted(unit.signed) == sorted(whole[unit.event_id])
            spanning += unit.whole is not None
        else:
            assert unit.whole is None
    assert spanning > 10


def test_classify_asks_the_judge_only_on_a_mismatch() -> None:
    """Recognised: a duplicate; not: a conflict; same fingerprint: never asked."""
    units = [
        Unit("a", 1, "f" * 16, (), 0),
        Unit("b", 1, "e" * 16, (), 0),
        Unit("c", 1, "d" * 16, (), 0),
    ]
    known: dict[tuple[str, int], tuple[str, str | None]] = {
        ("a", 1): ("0" * 16, None),
        ("b", 1): ("1" * 16, None),
        ("c", 1): ("d" * 16, None),
    }
    asked: list[str] = []

    def replayed(unit: Unit, stored: str) -> bool:
        asked.append(unit.event_id)
        return stored == "0" * 16

    sorted_units = classify(units, known, {}, None, replayed)
    assert asked == ["a", "b"]
    assert [u.event_id for u in sorted_units.duplicates] == ["a", "c"]
    assert [u.event_id for u, _ in sorted_units.conflicts] == ["b"]
    assert not sorted_units.new
