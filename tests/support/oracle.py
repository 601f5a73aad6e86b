"""An independent oracle for the standard billing tables: what the totals must be.

It recomputes, from the charges alone and with none of shardbill's
aggregation code, the rows of :func:`shardbill.tables.catalog.billing_tables`, so a
test can compare them with what the shards hold.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from shardbill.rules import Charge

Rows = dict[str, dict[tuple[Any, ...], list[int]]]


def _units(value: Decimal, scale: int = 6) -> int:
    scaled = value * (Decimal(10) ** scale)
    assert scaled == scaled.to_integral_value()
    return int(scaled)


def expected_rows(charges: Iterable[Charge]) -> Rows:
    """Table name -> key (dates as ISO text) -> measures, for billing_tables(scale=6)."""
    out: Rows = {
        "usage_daily": defaultdict(lambda: [0, 0, 0]),
        "usage_monthly": defaultdict(lambda: [0, 0, 0]),
        "usage_by_country": defaultdict(lambda: [0, 0]),
        "account_balance": defaultdict(lambda: [0, 0, None]),  # type: ignore[list-item]
    }
    for c in charges:
        day = c.time.date().isoformat()
        month = c.time.date().replace(day=1).isoformat()
        q, a = _units(c.quantity), _units(c.amount)
        row = out["usage_daily"][(c.account, day, c.product)]
        row[0] += q
        row[1] += a
        row[2] += 1
        row = out["usage_monthly"][(c.account, month, c.product, c.currency)]
        row[0] += q
        row[1] += a
        row[2] += 1
        country = c.dimensions.get("country", "--")
        row = out["usage_by_country"][(c.account, month, country)]
        row[0] += a
        row[1] += 1
        row = out["account_balance"][(c.account, c.currency)]
        row[0] += a
        row[1] += 1
        row[2] = a if row[2] is None else max(row[2], a)
    return {name: dict(rows) for name, rows in out.items()}


KEYS = {
    "usage_daily": ("account_id", "day", "product"),
    "usage_monthly": ("account_id", "month", "product", "currency"),
    "usage_by_country": ("account_id", "month", "country"),
    "account_balance": ("account_id", "currency"),
}
MEASURES = {
    "usage_daily": ("quantity", "amount", "charges"),
    "usage_monthly": ("quantity", "amount", "charges"),
    "usage_by_country": ("amount", "charges"),
    "account_balance": ("amount", "charges", "largest_charge"),
}


def actual_rows(backend: Any, *, slot_check: Any = None) -> Rows:
    """Read every standard table from every shard of ``backend`` (keys must not repeat)."""
    out: Rows = {}
    for table, keys in KEYS.items():
        rows: dict[tuple[Any, ...], list[int]] = {}
        cols = ", ".join(f"`{c}`" for c in (*keys, *MEASURES[table], "sb_slot"))
        for shard in backend.shards:
            for row in backend.rows(shard, f"SELECT {cols} FROM `{table}`"):
                key = tuple(row[: len(keys)])
                assert key not in rows, f"{table} row {key} is on two shards"
                rows[key] = [int(v) for v in row[len(keys) : -1]]
                if slot_check is not None:
                    slot_check(shard, key, int(row[-1]))
        out[table] = rows
    return out
