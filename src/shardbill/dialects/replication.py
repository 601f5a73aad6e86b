"""Replication state asked of a server: its lag, its applied position, the last write's GTID.

The SQL differs per server family, so it lives here, in one place:

=====================  ====================================  ================================
question               MariaDB                               MySQL
=====================  ====================================  ================================
lag (seconds)          ``SHOW REPLICA STATUS``:              ``SHOW REPLICA STATUS``:
                       ``Seconds_Behind_Master``             ``Seconds_Behind_Source``
position of a write    ``SELECT @@SESSION.last_gtid``        ``@@gtid_executed`` (the set)
wait for a position    ``MASTER_GTID_WAIT(gtid, timeout)``   ``WAIT_FOR_EXECUTED_GTID_SET``
=====================  ====================================  ================================

Lag is ``None`` (unknown) when the server is not a replica or when either
replication thread is stopped: MariaDB reports ``Seconds_Behind_Master`` as
NULL then, and a stopped applier means the replica falls further behind
every second. Unknown is never taken for zero.
"""

from __future__ import annotations

from shardbill.dialects.base import Dialect
from shardbill.errors import FatalDatabaseError
from shardbill.protocols import DBAPICursor

__all__ = ["last_position", "replica_lag", "wait_for_position", "write_position"]

_LAG_COLUMNS = ("Seconds_Behind_Master", "Seconds_Behind_Source")
_RUNNING = (
    ("Slave_IO_Running", "Replica_IO_Running"),
    ("Slave_SQL_Running", "Replica_SQL_Running"),
)


def replica_lag(cursor: DBAPICursor, *, shard: str | None = None) -> float | None:
    """Seconds the server behind ``cursor`` is behind its primary, or ``None`` when unknown.

    Needs ``REPLICA MONITOR`` (MariaDB >= 10.5.9), ``REPLICATION CLIENT``
    (MySQL, older MariaDB) or ``SUPER``.

    Raises:
        FatalDatabaseError: the user may not run ``SHOW REPLICA STATUS`` (the
            message names the grant).
    """
    try:
        cursor.execute("SHOW REPLICA STATUS", ())
    except FatalDatabaseError as exc:
        if exc.errno in (1227, 1045, 1142):
            raise FatalDatabaseError(
                f"shard {shard!r}: the replica user may not run SHOW REPLICA STATUS "
                f"({exc}), which max_lag needs: GRANT REPLICA MONITOR ON *.* (MariaDB "
                ">= 10.5.9) or GRANT REPLICATION CLIENT ON *.* (MySQL) to it",
                errno=exc.errno,
                shard=shard,
            ) from exc
        raise
    row = cursor.fetchone()
    names = [d[0] for d in getattr(cursor, "description", None) or ()]
    if row is None or not names:
        return None  # not a replica: nothing says how current it is
    status = dict(zip(names, row, strict=False))
    for pair in _RUNNING:
        running = next((status[n] for n in pair if n in status), None)
        if running is not None and str(running) != "Yes":
            return None
    for column in _LAG_COLUMNS:
        if column in status:
            value = status[column]
            return None if value is None else float(value)
    return None


def last_position(cursor: DBAPICursor, dialect: Dialect) -> str | None:
    """The GTID of the session's last commit (MariaDB ``@@last_gtid``), or ``None``.

    ``None`` when the server has no binary log (the empty string) or is not
    MariaDB: then no replica can be waited for and a read-your-writes read
    goes to the primary.
    """
    if dialect.name != "mariadb":
        return None
    cursor.execute("SELECT @@SESSION.last_gtid", ())
    row = cursor.fetchone()
    value = None if row is None else row[0]
    if isinstance(value, bytes):
        value = value.decode("ascii")
    return str(value) if value else None


def write_position(cursor: DBAPICursor, dialect: Dialect, *, wrote: bool) -> str | None:
    """The position a replica must reach to show what the session just committed.

    After a transaction that wrote, its own GTID (``@@last_gtid``). After one
    that wrote nothing (every event a duplicate, applied earlier by whichever
    writer), the primary's whole binlog position (``@@gtid_binlog_pos``): it
    covers that earlier commit, whoever made it. ``None`` when there is none.
    """
    if not wrote:
        if dialect.name != "mariadb":
            return None
        cursor.execute("SELECT @@GLOBAL.gtid_binlog_pos", ())
        row = cursor.fetchone()
        value = None if row is None else row[0]
        if isinstance(value, bytes):
            value = value.decode("ascii")
        return str(value) if value else None
    return last_position(cursor, dialect)


def wait_for_position(cursor: DBAPICursor, dialect: Dialect, position: str, timeout: float) -> bool:
    """Wait at most ``timeout`` seconds until this replica applied ``position``; True if it did.

    MariaDB: ``MASTER_GTID_WAIT`` returns 0 once ``gtid_slave_pos`` reached the
    GTID in every domain named, -1 on timeout. A server that is not MariaDB
    answers False (its position cannot be compared).
    """
    if dialect.name != "mariadb":
        return False
    cursor.execute(
        f"SELECT MASTER_GTID_WAIT({dialect.placeholder}, {dialect.placeholder})",
        (position, _timeout_text(timeout)),
    )
    row = cursor.fetchone()
    return row is not None and row[0] is not None and int(row[0]) == 0


def _timeout_text(timeout: float) -> str:
    # A str binds as a DECIMAL-compatible literal: floats are never bound (money rule).
    return f"{max(0.0, timeout):.3f}"
