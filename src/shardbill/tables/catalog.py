"""Ready-made aggregate tables for a usage-billing platform (pure).

:func:`billing_tables` is the set the demo, the examples and the benchmarks
use: four tables, so every charge makes four row deltas, in the range of the
reference system's 10-40 UPSERTs per transaction once batches coalesce:

``usage_daily``
    per account, UTC day and product: quantity, amount, charge count.
``usage_monthly``
    per account, UTC month, product and currency: quantity, amount, count.
``usage_by_country``
    per account, UTC month and ``country`` dimension (``"--"`` when absent):
    amount and count.
``account_balance``
    per account and currency: amount, count, and the largest single charge.
"""

from __future__ import annotations

from shardbill.tables.aggregates import (
    Account,
    AggregateTable,
    Amount,
    BigInt,
    Count,
    Currency,
    Date,
    Day,
    Dimension,
    KeyColumn,
    Measure,
    MergeKind,
    Month,
    Product,
    Quantity,
    VarChar,
)

__all__ = ["billing_tables"]


def billing_tables(
    *, scale: int = 6, account_type: BigInt | VarChar | None = None
) -> tuple[AggregateTable, ...]:
    """The four standard billing aggregate tables.

    Args:
        scale: decimal places kept for quantities and amounts (integer units).
        account_type: the account column type: ``BigInt()`` (default) for
            integer account ids, ``VarChar(n)`` for string ids.
    """
    account = KeyColumn(name="account_id", type=account_type or BigInt(), projection=Account())
    product = KeyColumn(name="product", type=VarChar(64), projection=Product())
    month = KeyColumn(name="month", type=Date(), projection=Month())
    currency = KeyColumn(name="currency", type=VarChar(3), projection=Currency())
    quantity = Measure(name="quantity", value=Quantity(scale=scale))
    amount = Measure(name="amount", value=Amount(scale=scale))
    count = Measure(name="charges", value=Count())
    return (
        AggregateTable(
            name="usage_daily",
            keys=(account, KeyColumn(name="day", type=Date(), projection=Day()), product),
            measures=(quantity, amount, count),
        ),
        AggregateTable(
            name="usage_monthly",
            keys=(account, month, product, currency),
            measures=(quantity, amount, count),
        ),
        AggregateTable(
            name="usage_by_country",
            keys=(
                account,
                month,
                KeyColumn(
                    name="country", type=VarChar(8), projection=Dimension("country", default="--")
                ),
            ),
            measures=(amount, count),
        ),
        AggregateTable(
            name="account_balance",
            keys=(account, currency),
            measures=(
                amount,
                count,
                Measure(name="largest_charge", value=Amount(scale=scale), merge=MergeKind.MAX),
            ),
        ),
    )
