"""Reading, recording and copying one shard's declaration history (``shardbill_declarations``).

One row per declaration the shard's ledger may hold fingerprints of:
``version`` (the declaration's id), ``description`` (its canonical
description, :meth:`~shardbill.declarations.Declaration.describe`),
``recorded_at`` (Unix seconds) and ``origin``. Rows are only ever added
(an ``INSERT`` that skips a version recorded already), so recording is
idempotent and concurrent recorders cannot clash. The history is a handful
of rows (one per schema change) and is read only on a fingerprint mismatch.

Versions are never forgotten: an older declaration is needed as long as a
ledger row written under it may be replayed, and writers with the old
declaration may keep writing after a migration (on MySQL/MariaDB), so no
time can be named after which none was. Keeping them costs nothing on the
write path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence

from shardbill.declarations import Declaration, Origin, Recorded
from shardbill.dialects.base import Dialect
from shardbill.dialects.detect import dialect_for
from shardbill.errors import SchemaError
from shardbill.providers.base import ConnectionProvider, DBAPICursor
from shardbill.tables.definitions import DESCRIPTION_LENGTH, SystemTables

__all__ = ["copy_history", "history_of", "read_history", "record", "record_on"]

log = logging.getLogger("shardbill.declarations")


def read_history(cursor: DBAPICursor, dialect: Dialect, table: str) -> list[Recorded]:
    """The declarations recorded in ``table``, oldest first (unreadable rows skipped, logged)."""
    cursor.execute(
        f"SELECT version, description, recorded_at, origin FROM {dialect.quote(table)}", ()
    )
    found: list[Recorded] = []
    for version, description, recorded_at, origin in cursor.fetchall():
        try:
            declared = Declaration.parse(str(description))
        except ValueError as exc:
            log.warning("declaration %s in %s is unreadable, skipped: %s", version, table, exc)
            continue
        if declared.version != str(version):
            log.warning(
                "declaration %s in %s does not match its description, skipped", version, table
            )
            continue
        kind: Origin = "derived" if str(origin) == "derived" else "declared"
        found.append(Recorded(declaration=declared, recorded_at=int(recorded_at), origin=kind))
    found.sort(key=lambda r: (r.recorded_at, r.declaration.version))
    return found


def record(
    cursor: DBAPICursor,
    dialect: Dialect,
    table: str,
    declared: Declaration,
    *,
    origin: Origin = "declared",
    now: float | None = None,
) -> None:
    """Add ``declared`` to the history unless it is there already (the caller commits).

    Raises:
        SchemaError: the description is longer than the column holds.
    """
    text = declared.describe()
    if len(text) > DESCRIPTION_LENGTH:
        raise SchemaError(
            f"the declaration's description is {len(text)} characters, more than the "
            f"{DESCRIPTION_LENGTH} that {table!r} holds; declare fewer or shorter "
            "tables and columns per table set"
        )
    p = dialect.placeholder
    cursor.execute(
        f"{dialect.insert_ignore_verb} INTO {dialect.quote(table)} "
        f"(version, description, recorded_at, origin) VALUES ({p}, {p}, {p}, {p})",
        (declared.version, text, int(time.time() if now is None else now), origin),
    )


def record_on(
    provider: ConnectionProvider,
    shards: Iterable[str],
    declared: Sequence[Recorded] | Declaration,
    *,
    system_tables: SystemTables | None = None,
) -> None:
    """Record ``declared`` (one declaration, or recorded ones with their origins) on ``shards``."""
    table = (system_tables or SystemTables()).declarations
    items = (
        [Recorded(declaration=declared, recorded_at=int(time.time()))]
        if isinstance(declared, Declaration)
        else list(declared)
    )
    for shard in shards:
        with provider.connection(shard) as conn:
            dialect = dialect_for(conn)
            cursor = conn.cursor()
            try:
                for item in items:
                    record(
                        cursor,
                        dialect,
                        table,
                        item.declaration,
                        origin=item.origin,
                        now=item.recorded_at,
                    )
            finally:
                cursor.close()


def history_of(
    provider: ConnectionProvider, shard: str, *, system_tables: SystemTables | None = None
) -> list[Recorded]:
    """One shard's history, read in its own transaction."""
    table = (system_tables or SystemTables()).declarations
    with provider.connection(shard) as conn:
        dialect = dialect_for(conn)
        cursor = conn.cursor()
        try:
            return read_history(cursor, dialect, table)
        finally:
            cursor.close()


def copy_history(
    provider: ConnectionProvider,
    sources: Iterable[str],
    targets: Sequence[str],
    *,
    system_tables: SystemTables | None = None,
) -> None:
    """Give ``targets`` (shards a reshard adds) every declaration the ``sources`` recorded.

    The ledger rows a reshard copies keep their fingerprints, so the shard
    that receives them needs the declarations they were made under.
    """
    seen: dict[str, Recorded] = {}
    for source in sources:
        for item in history_of(provider, source, system_tables=system_tables):
            before = seen.get(item.declaration.version)
            if before is None or item.recorded_at < before.recorded_at:
                seen[item.declaration.version] = item
    if seen:
        record_on(provider, targets, list(seen.values()), system_tables=system_tables)
