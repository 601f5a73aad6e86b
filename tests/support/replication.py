"""A MariaDB primary with GTID binlog replicas, on private servers, for replica tests.

:func:`start_replication` starts one primary (binary log on) and ``n``
replicas (``read_only``), points each replica at the primary with
``CHANGE MASTER TO ... MASTER_USE_GTID = slave_pos`` and waits until every
replica threads runs. Every wait is bounded: a replica that does not catch up
within ``timeout`` seconds raises :class:`ReplicationError` with its
``SHOW REPLICA STATUS`` error fields.

The primary creates ``database`` and a SELECT-only user ``reader`` (with
``REPLICA MONITOR``, which ``SHOW REPLICA STATUS`` needs): both replicate, so
the replicas can be read by ``reader`` exactly as the replicas how-to says.

Example::

    topology = start_replication(private_servers, replicas=2, database="billing")
    topology.primary.execute("INSERT INTO billing.t VALUES (1)")
    topology.sync()                       # every replica has applied it
    topology.stop_applier(0)              # replica 0 lags from now on
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import attrs

from tests.support.server_fixtures import ServerFactory
from tests.support.servers import MariaDBServer

__all__ = ["READER_PASSWORD", "ReplicationError", "Topology", "start_replication"]

READER_PASSWORD = "reader-pw"  # a throwaway account on a private test server


class ReplicationError(RuntimeError):
    """A replica did not start or catch up in time."""


def _status(server: MariaDBServer) -> dict[str, Any]:
    conn = server.connect(read_timeout=10)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW REPLICA STATUS")
            row = cur.fetchone()
            names = [d[0] for d in cur.description or ()]
    finally:
        conn.close()
    return dict(zip(names, row, strict=True)) if row else {}


@attrs.define
class Topology:
    """One primary and its replicas (all private servers), and the database they share."""

    primary: MariaDBServer
    replicas: list[MariaDBServer]
    database: str
    timeout: float

    def url(self, server: MariaDBServer, driver: str = "pymysql", **options: object) -> str:
        """A shardbill URL for ``server`` (replicas as ``reader``, the primary as root)."""
        if server is self.primary:
            text = server.url(self.database, driver)
        else:
            text = server.url(self.database, driver, user="reader", password=READER_PASSWORD)
        if options:
            text += "?" + "&".join(f"{k}={v}" for k, v in options.items())
        return text

    def replica_urls(self, driver: str = "pymysql", **options: object) -> list[str]:
        """The replicas' URLs, in order."""
        return [self.url(r, driver, **options) for r in self.replicas]

    def position(self) -> str:
        """The primary's ``@@gtid_binlog_pos`` now."""
        rows = self.primary.execute("SELECT @@GLOBAL.gtid_binlog_pos")
        return str(rows[0][0])

    def sync(self, replicas: Sequence[int] | None = None) -> None:
        """Wait until the replicas (default: all running ones) applied the primary's position."""
        position = self.position()
        for i in range(len(self.replicas)) if replicas is None else replicas:
            rows = self.replicas[i].execute(
                "SELECT MASTER_GTID_WAIT(%s, %s)", (position, self.timeout)
            )
            if rows[0][0] != 0:
                status = _status(self.replicas[i])
                raise ReplicationError(
                    f"replica {i} did not reach {position} within {self.timeout}s: "
                    f"io={status.get('Slave_IO_Running')} sql={status.get('Slave_SQL_Running')} "
                    f"{status.get('Last_IO_Error')!r} {status.get('Last_SQL_Error')!r}"
                )

    def stop_applier(self, i: int) -> None:
        """Stop replica ``i``'s SQL thread: it receives but applies nothing (it lags)."""
        self.replicas[i].execute("STOP REPLICA SQL_THREAD")

    def start_applier(self, i: int) -> None:
        """Start replica ``i``'s SQL thread again."""
        self.replicas[i].execute("START REPLICA SQL_THREAD")

    def status(self, i: int) -> dict[str, Any]:
        """Replica ``i``'s ``SHOW REPLICA STATUS`` row, by column name."""
        return _status(self.replicas[i])


def start_replication(
    private_servers: ServerFactory,
    *,
    replicas: int = 2,
    database: str = "billing",
    timeout: float = 30.0,
) -> Topology:
    """Start a primary and ``replicas`` GTID replicas of it; return them replicating."""
    (primary,) = private_servers(1, log_bin=True)
    copies = private_servers(
        replicas, log_bin=True, extra_args=("--read-only", "--log-slave-updates")
    )
    for replica in copies:
        replica.execute(
            f"CHANGE MASTER TO MASTER_HOST = '{primary.host}', MASTER_PORT = {primary.port}, "
            "MASTER_USER = 'root', MASTER_PASSWORD = '', MASTER_USE_GTID = slave_pos, "
            "MASTER_CONNECT_RETRY = 1"
        )
        replica.execute("START REPLICA")
    deadline = time.monotonic() + timeout
    for i, replica in enumerate(copies):
        while True:
            status = _status(replica)
            if status.get("Slave_IO_Running") == "Yes" and status.get("Slave_SQL_Running") == "Yes":
                break
            if time.monotonic() > deadline:
                raise ReplicationError(
                    f"replica {i} did not start replicating within {timeout}s: "
                    f"{status.get('Last_IO_Error')!r} {status.get('Last_SQL_Error')!r}"
                )
            time.sleep(0.05)
    primary.execute(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4")
    primary.execute("CREATE USER 'reader'@'%%' IDENTIFIED BY %s", (READER_PASSWORD,))
    primary.execute(f"GRANT SELECT ON `{database}`.* TO 'reader'@'%'")
    primary.execute("GRANT REPLICA MONITOR ON *.* TO 'reader'@'%'")
    topology = Topology(primary=primary, replicas=copies, database=database, timeout=timeout)
    topology.sync()
    return topology
