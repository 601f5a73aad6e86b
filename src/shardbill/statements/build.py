"""Making the statements of a closed period from the aggregates, read through the Reader.

:class:`StatementBuilder` checks that the period is closed on every shard
(also both sides of a reshard in progress), reads the period's rows of a
monthly table (by default ``usage_monthly``: account, UTC month, product and
currency, with quantity, amount and a charge count) through
:class:`~shardbill.reader.Reader` (exact while a reshard moves slots), and
prices them with :func:`~shardbill.statements.document.price_lines`.

A closed period's aggregates are final (no event of it is applied, a
correction of it is refused), so every run gives the same totals, and the
canonical form gives the same bytes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from decimal import Decimal

from shardbill.errors import ConfigurationError, PeriodNotClosedError
from shardbill.mapstore.base import MapStore
from shardbill.periods.close import PeriodCloser
from shardbill.periods.months import Period, is_utc_calendar
from shardbill.providers.base import ConnectionProvider
from shardbill.reader import Reader
from shardbill.rules.events import Account
from shardbill.rules.pricebook import PriceBook
from shardbill.shardmap import ShardMap
from shardbill.statements.document import Statement, UsageTotal, price_lines
from shardbill.tables import SystemTables
from shardbill.tables.aggregates import (
    Account as AccountKey,
)
from shardbill.tables.aggregates import (
    AggregateTable,
    Amount,
    Count,
    Currency,
    KeyValue,
    MergeKind,
    Month,
    Product,
    Quantity,
)

__all__ = ["DEFAULT_TABLE", "StatementBuilder"]

DEFAULT_TABLE = "usage_monthly"
"""The table statements read unless told otherwise (of
:func:`~shardbill.tables.catalog.billing_tables`)."""


class _Columns:
    """The columns of a statement table: account, UTC month, product, [currency]; measures."""

    def __init__(self, table: AggregateTable) -> None:
        def key(kind: type) -> str | None:
            return next((c.name for c in table.keys if isinstance(c.projection, kind)), None)

        def measure(kind: type) -> str | None:
            return next(
                (
                    m.name
                    for m in table.measures
                    if isinstance(m.value, kind) and m.merge is MergeKind.SUM
                ),
                None,
            )

        found = {
            "an account key": key(AccountKey),
            "a month key": key(Month),
            "a product key": key(Product),
            "a summed quantity measure": measure(Quantity),
            "a summed amount measure": measure(Amount),
        }
        missing = [what for what, name in found.items() if name is None]
        if missing:
            raise ConfigurationError(
                f"statement table {table.name!r} lacks {', '.join(missing)}; statements read "
                "a monthly table keyed by account, month and product (and currency) with "
                "quantity and amount measures, such as usage_monthly of billing_tables()"
            )
        account, month, product, quantity, amount = (str(name) for name in found.values())
        tz = next(c.projection for c in table.keys if c.name == month).tz  # type: ignore[attr-defined]
        if not is_utc_calendar(tz):
            raise ConfigurationError(
                f"statement table {table.name!r}: its month key {month!r} is in time zone "
                f"{tz}, but a billing period is a UTC month; use a table whose Month() "
                "projection is in UTC"
            )
        self.account, self.month, self.product = account, month, product
        self.currency = key(Currency)
        self.quantity, self.amount, self.count = quantity, amount, measure(Count)


def _account_order(account: Account) -> tuple[int, int, str]:
    return (0, account, "") if isinstance(account, int) else (1, 0, account)


class StatementBuilder:
    """Builds reproducible statements of closed periods.

    Args:
        provider: lends connections to the shards.
        shard_map: the map store (or a map): reads follow it, and the close
            check reaches an unfinished reshard's shards through it.
        tables: the aggregate tables (the statement table among them).
        price_book: the price book the period was priced with (units, period
            models, rounding).
        table: the monthly table read (default :data:`DEFAULT_TABLE`).
        system_tables: the names of shardbill's own tables.

    Example:
        >>> builder = StatementBuilder(provider=p, shard_map=store, tables=billing_tables(),
        ...                            price_book=comms.price_book())  # doctest: +SKIP
        >>> builder.statement("2026-11", 42).to_json()  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        provider: ConnectionProvider,
        shard_map: ShardMap | MapStore,
        tables: Sequence[AggregateTable],
        price_book: PriceBook,
        table: str = DEFAULT_TABLE,
        system_tables: SystemTables | None = None,
    ) -> None:
        spec = next((t for t in tables if t.name == table), None)
        if spec is None:
            raise ConfigurationError(
                f"statement table {table!r} is not among the tables "
                f"({', '.join(t.name for t in tables)}); name one of them"
            )
        self._spec = spec
        self._columns = _Columns(spec)
        self._book = price_book
        self._reader = Reader(
            shard_map=shard_map, provider=provider, tables=tables, system_tables=system_tables
        )
        self._closer = PeriodCloser(
            provider=provider, shard_map=shard_map, system_tables=system_tables
        )

    def check_closed(self, period: Period | str) -> Period:
        """The period, if it is closed on every shard.

        Raises:
            PeriodNotClosedError: it is open or closing somewhere, naming where.
            ConfigurationError: ``period`` is not ``YYYY-MM``.
        """
        wanted = period if isinstance(period, Period) else Period.parse(period)
        (status,) = self._closer.status(wanted)
        if status.state != "closed":
            where = ", ".join(f"{s} {state}" for s, state in sorted(status.shards.items()))
            raise PeriodNotClosedError(
                f"period {wanted} is {status.state} ({where}): its aggregates may still "
                f"change, so no statement is made; close it first (`shardbill period close "
                f"{wanted}`), then make the statements"
            )
        return wanted

    def statements(
        self, period: Period | str, *, accounts: Iterable[Account] | None = None
    ) -> tuple[Statement, ...]:
        """The statements of a closed period: every account with usage, or the given ones.

        Args:
            period: the period, ``YYYY-MM``; it must be closed.
            accounts: only these accounts (one statement each, with no lines
                for an account without usage); None: every account with usage.

        Returns:
            The statements, ordered by account.

        Raises:
            PeriodNotClosedError: the period is not closed on every shard.
            InvalidInputError: a line cannot be priced (see
                :func:`~shardbill.statements.document.price_lines`).
        """
        wanted = self.check_closed(period)
        named = None if accounts is None else list(dict.fromkeys(accounts))  # read once
        per_account = self._totals(wanted, named)
        chosen = list(per_account) if named is None else named
        return tuple(
            Statement(
                period=str(wanted),
                account=account,
                price_book=self._book.name,
                price_book_version=self._book.version,
                rounding=self._book.settings.rounding,
                table=self._spec.name,
                lines=price_lines(
                    per_account.get(account, []),
                    price_book=self._book,
                    account=account,
                    period=wanted,
                ),
            )
            for account in sorted(chosen, key=_account_order)
        )

    def statement(self, period: Period | str, account: Account) -> Statement:
        """One account's statement of a closed period (see :meth:`statements`)."""
        (found,) = self.statements(period, accounts=[account])
        return found

    def _totals(
        self, period: Period, accounts: Sequence[Account] | None
    ) -> dict[Account, list[UsageTotal]]:
        c = self._columns
        group = [c.account, c.product, *([c.currency] if c.currency else [])]
        month = dt.date(period.year, period.month, 1)
        filters: list[dict[str, KeyValue]]
        if accounts is None:
            filters = [{c.month: month}]
        else:
            filters = [{c.month: month, c.account: a} for a in accounts]
        out: dict[Account, list[UsageTotal]] = {}
        for where in filters:
            rows = self._reader.totals(self._spec.name, group_by=group, where=where)
            for key, measures in rows.items():
                account, product = key[0], key[1]
                currency = str(key[2]) if c.currency else self._book.currency
                charges = measures[c.count] if c.count else None
                out.setdefault(account, []).append(  # type: ignore[arg-type]
                    UsageTotal(
                        product=str(product),
                        currency=currency,
                        quantity=Decimal(measures[c.quantity]),
                        usage_amount=Decimal(measures[c.amount]),
                        charges=None if charges is None else int(charges),
                    )
                )
        return out
