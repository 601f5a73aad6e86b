"""Reproducible statements of closed billing periods (issue 20).

For a closed period, one statement per account: line items from the price
book (per-period models such as tiers, allowances and minimums applied to the
period's aggregated quantity at statement time; per-event charges summed from
the aggregates), per-currency minor units, one rounding point, in canonical
JSON or CSV that is the same bit for bit on every run, with a sha256 checksum
inside.

* :mod:`shardbill.statements.document`: the statement as data, the line
  pricing and the canonical bytes (no I/O);
* :mod:`shardbill.statements.build`: :class:`StatementBuilder`, which checks
  the period is closed and reads the aggregates through the
  :class:`~shardbill.reader.Reader` (``shardbill statement``).

Example:
    >>> builder = StatementBuilder(provider=provider, shard_map=store,
    ...     tables=billing_tables(), price_book=engine.price_book)  # doctest: +SKIP
    >>> for statement in builder.statements("2026-11"):  # doctest: +SKIP
    ...     print(statement.account, statement.totals, statement.checksum)

Level: the operator's tools, with the audit: above the reader, the periods and
the rules it reads through; only the command line imports it
(``tests/test_layers.py``).
"""

from shardbill.statements.build import DEFAULT_TABLE, StatementBuilder
from shardbill.statements.document import (
    CSV_COLUMNS,
    FORMAT,
    Statement,
    StatementLine,
    UsageTotal,
    price_lines,
    verify_csv,
    verify_json,
)

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_TABLE",
    "FORMAT",
    "Statement",
    "StatementBuilder",
    "StatementLine",
    "UsageTotal",
    "price_lines",
    "verify_csv",
    "verify_json",
]
