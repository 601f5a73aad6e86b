"""A ConnectionProvider of your own: PyMySQL connections with credentials from a secrets store.

The provider is the class below (a dozen lines); shardbill needs nothing else
from it. :func:`main` plugs it into the aggregation writer and delivers the
same batch twice, as a stream does after a crash: the second delivery is
skipped by the ledger, so the totals count every event once. Run it against
a database of its own (it creates the billing tables there)::

    mariadb -h127.0.0.1 -uroot -e "CREATE DATABASE custom_provider_example"
    SHARD_0_HOST=127.0.0.1 SHARD_0_USER=root SHARD_0_DATABASE=custom_provider_example \
        python examples/custom_provider.py
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import pymysql

from shardbill import AggregationWriter, Pipeline, Reader, ShardMap
from shardbill.providers import ConnectionProvider, DBAPIConnection, transaction
from shardbill.rules import comms
from shardbill.tables.catalog import billing_tables
from shardbill.workloads.synthetic import Traffic


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
    """Price a small batch and write it twice through the provider: the ledger counts it once."""
    provider: ConnectionProvider = SecretsProvider(environment_credentials)
    shard_map = ShardMap.create(["shard-0"])
    traffic = Traffic(model="uniform", events=200, seed=1, accounts=20)
    writer = AggregationWriter(
        shard_map=shard_map,
        provider=provider,
        tables=billing_tables(),
        clock=traffic.end.timestamp,  # the synthetic day is dated; a real service leaves this out
    )
    writer.ensure_schema()
    pipeline = Pipeline(engine=comms.engine(), writer=writer)
    batch = list(traffic.distinct())
    for delivery in ("first delivery", "redelivery"):  # a stream replaying after a crash
        write = pipeline.process(batch).write
        print(
            f"{delivery}: {len(write.applied_events)} events applied, "
            f"{len(write.duplicate_events)} skipped as duplicates"
        )
    reader = Reader(shard_map=shard_map, provider=provider, tables=billing_tables())
    totals = reader.totals("account_balance", group_by=["currency"])
    print(f"total {totals[('USD',)]['amount']} USD over {totals[('USD',)]['charges']} charges")
    provider.close()


if __name__ == "__main__":
    main()
