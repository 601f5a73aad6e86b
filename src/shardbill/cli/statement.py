"""``shardbill statement PERIOD``: reproducible statements of a closed period (issue 20).

Refuses a period that is not closed on every shard (exit
:data:`~shardbill.cli._common.EXIT_PROBLEM`, with the reason). Otherwise
builds one statement per account with usage in the period (or per
``--account``) with :class:`shardbill.statements.StatementBuilder`, reading
the aggregates through the Reader (exact during a reshard) and pricing them
with the configured price book (``[rules] price_book``, else the comms
example's).

``--format json`` (default) writes each statement's canonical JSON (one
line, ``sha256`` inside); ``--format csv`` its canonical CSV (last row
``sha256,<hex>``). Without ``--out`` the bytes go to standard output (JSON:
one statement a line; CSV: one statement, so give ``--account``); with
``--out DIR`` each statement is written to
``DIR/statement-PERIOD-ACCOUNT.json`` (or ``.csv``; the account percent-encoded)
and one line per file names it and its checksum. Running the command again
writes the same bytes.
"""

from __future__ import annotations

import os
import sys
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

from shardbill.cli._common import EXIT_PROBLEM, add_config, command, live_map, load_config
from shardbill.errors import ConfigurationError

if TYPE_CHECKING:
    import argparse

    from shardbill.cli._common import Subparsers
    from shardbill.statements import Statement

__all__ = ["add_parser", "file_name", "run"]


def add_parser(sub: Subparsers) -> None:
    """Register ``statement`` on the main parser's subcommands."""
    statement = command(
        sub,
        "statement",
        "reproducible per-account statements of a closed period (JSON or CSV, checksummed)",
        "Make the statements of a closed billing period: per account, line items from the "
        "price book (period models such as tiers, allowances and minimums applied to the "
        "period's aggregated quantity; per-event charges summed), rounded once to the "
        "currency's minor unit, in canonical bytes with a sha256 checksum inside: the same "
        "bytes on every run. An open or closing period is refused with the reason.",
        "  shardbill statement 2026-11 --out statements/\n"
        "  shardbill statement 2026-11 --account 42\n"
        "  shardbill statement 2026-11 --account 42 --format csv",
    )
    statement.add_argument("period", metavar="PERIOD", help="the closed period, YYYY-MM")
    statement.add_argument(
        "--account",
        action="append",
        metavar="ACCOUNT",
        help="only this account (repeat for more; default: every account with usage)",
    )
    statement.add_argument(
        "--format", choices=("json", "csv"), default="json", help="the statement format"
    )
    statement.add_argument(
        "--out", metavar="DIR", help="write one file per statement into DIR (created if needed)"
    )
    statement.add_argument(
        "--table",
        default="usage_monthly",
        help="the monthly aggregate table to read (account, month, product, currency keys)",
    )
    add_config(statement)


def file_name(statement: Statement, fmt: str) -> str:
    """``statement-PERIOD-ACCOUNT.FORMAT``, the account percent-encoded (safe in any directory)."""
    account = urllib.parse.quote(str(statement.account), safe="")
    return f"statement-{statement.period}-{account}.{fmt}"


def _account(text: str, as_int: bool) -> int | str:
    if not as_int:
        return text
    try:
        return int(text, 10)
    except ValueError:
        raise ConfigurationError(
            f"--account {text!r}: the accounts of this deployment are integers; give e.g. "
            "--account 42"
        ) from None


def _write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (a temporary file, then a rename)."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _print_bytes(data: bytes) -> None:
    """The canonical bytes on standard output as they are (text only where it has no bytes)."""
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:  # replaced by a text stream (a test, an embedding program)
        sys.stdout.write(data.decode("utf-8"))
        return
    sys.stdout.flush()
    buffer.write(data)
    buffer.flush()


def run(args: argparse.Namespace) -> int:
    """Run ``statement``; returns the exit code."""
    from shardbill.errors import PeriodNotClosedError
    from shardbill.periods import Period
    from shardbill.statements import StatementBuilder

    period = Period.parse(args.period)
    config = load_config(args)
    accounts = (
        None if args.account is None else [_account(a, config.account_as_int) for a in args.account]
    )
    with config.open() as opened:
        live_map(config, opened.map_store)
        builder = StatementBuilder(
            provider=opened.provider,
            shard_map=opened.map_store,
            tables=config.tables,
            price_book=config.engine().price_book,
            table=args.table,
            system_tables=config.writer.settings().system_tables,
        )
        try:
            statements = builder.statements(period, accounts=accounts)
        except PeriodNotClosedError as exc:
            print(f"shardbill: {exc}", file=sys.stderr)
            return EXIT_PROBLEM

    def render(statement: Statement) -> bytes:
        return statement.to_json() if args.format == "json" else statement.to_csv()

    if args.out is None:
        if args.format == "csv" and len(statements) > 1:
            raise ConfigurationError(
                f"{len(statements)} statements: CSV goes to standard output one statement at "
                "a time; give --account ACCOUNT, or --out DIR for one file each"
            )
        for statement in statements:
            _print_bytes(render(statement))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for statement in statements:
        data = render(statement)
        path = out / file_name(statement, args.format)
        _write(path, data)
        checksum = (
            statement.checksum
            if args.format == "json"
            else data.rstrip(b"\n").rpartition(b",")[2].decode()
        )
        print(f"account {statement.account}: {path} sha256 {checksum}")
    print(f"period {period}: {len(statements)} statement(s) in {out}")
    return 0
