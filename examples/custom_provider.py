"""A ConnectionProvider of your own: PyMySQL connections with credentials from a secrets store.

The provider is the class below (a dozen lines); shardbill needs nothing else
from it. Run it against a server with, for example::

    SHARD_0_HOST=127.0.0.1 SHARD_0_USER=root SHARD_0_DATABASE=test \
        python examples/custom_provider.py
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import pymysql

from shardbill.dialects import UpsertSpec, dialect_for
from shardbill.providers import ConnectionProvider, DBAPIConnection, transaction


class SecretsProvider:
    """One PyMySQL connection per with-block, credentials looked up per shard."""

    def __init__(self, credentials: Callable[[str], dict[str, Any]]) -> None:
        self._credentials = credentials

    @contextlib.contextmanager
    def connection(self, shard: str, *, readonly: bool = False) -> Iterator[DBAPIConnection]:
        conn = pymysql.connect(**self._credentials(shard), autocommit=False, charset="utf8mb4")
        try:
            with transaction(conn):  # commit on success, rollback on error
                yield conn
        finally:
            conn.close()

    def close(self) -> None:
        pass  # nothing pooled, nothing to close


def environment_credentials(shard: str) -> dict[str, Any]:
    """Stand-in for a secrets manager: SHARD_0_HOST, SHARD_0_PASSWORD, ... for ``shard-0``."""
    prefix = shard.upper().replace("-", "_")
    return {
        "host": os.environ[f"{prefix}_HOST"],
        "port": int(os.environ.get(f"{prefix}_PORT", "3306")),
        "user": os.environ[f"{prefix}_USER"],
        "password": os.environ.get(f"{prefix}_PASSWORD", ""),
        "database": os.environ[f"{prefix}_DATABASE"],
    }


def main() -> None:
    """Create a table, apply the same batch twice through the provider, print the totals."""
    provider: ConnectionProvider = SecretsProvider(environment_credentials)
    spec = UpsertSpec(
        table="example_totals",
        columns=("account_id", "amount_minor"),
        key_columns=("account_id",),
        merges={"amount_minor": "sum"},
    )
    with provider.connection("shard-0") as conn:
        conn.cursor().execute(
            "CREATE TABLE IF NOT EXISTS example_totals"
            " (account_id BIGINT PRIMARY KEY, amount_minor BIGINT NOT NULL)"
        )
    for _ in range(2):
        with provider.connection("shard-0") as conn:
            dialect = dialect_for(conn)
            for sql, params in dialect.upsert_statements(spec, [(7, 150), (8, 25)]):
                conn.cursor().execute(sql, params)
    with provider.connection("shard-0", readonly=True) as conn:
        cursor = conn.cursor()
        cursor.execute("SELECT account_id, amount_minor FROM example_totals ORDER BY account_id")
        for account_id, amount_minor in cursor.fetchall():
            print(f"account {account_id}: {amount_minor}")
    provider.close()


if __name__ == "__main__":
    main()
