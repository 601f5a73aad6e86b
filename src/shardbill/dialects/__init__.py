"""SQL that differs per server family, and driver errors translated by error number.

* :class:`UpsertSpec` and :class:`MergeKind` describe a multi-row UPSERT;
  a :class:`Dialect` renders it (:class:`MySQLDialect` for MySQL and MariaDB,
  :class:`SQLiteDialect`) and splits batches under the server's limits.
* Everything else that differs per family is a method or attribute of the
  dialect, never a switch on its class or name at the call site: the DDL
  (``create_statements``, ``add_key_column_statements``,
  ``add_measure_statement``, ``describe_table``, ``refusals``), the lock
  suffixes (``share_lock_suffix``, ``exclusive_lock_suffix``),
  ``insert_ignore_verb``, the ledger prune (``prune_statement``), and
  :attr:`Dialect.embedded` (no replication, no isolation levels).
* :func:`dialect_for` asks a connection which dialect it speaks.
* :func:`translate` (and :func:`translating`) turn PyMySQL, mysqlclient and
  sqlite3 exceptions into :mod:`shardbill.errors` classes, by errno.

Importing this package never imports a MySQL driver.

Level: above the pure core and :mod:`shardbill.protocols`, below the providers:
a dialect never imports a connection pool (``tests/test_layers.py``).
"""

from shardbill.dialects.base import Dialect, UpsertSpec, validate_identifier
from shardbill.dialects.detect import dialect_for
from shardbill.dialects.mysql import MySQLDialect, parse_server_version
from shardbill.dialects.sqlite import SQLiteDialect
from shardbill.dialects.translate import (
    error_number,
    is_connection_error,
    is_driver_error,
    translate,
    translating,
)
from shardbill.tables.aggregates import MergeKind

__all__ = [
    "Dialect",
    "MergeKind",
    "MySQLDialect",
    "SQLiteDialect",
    "UpsertSpec",
    "dialect_for",
    "error_number",
    "is_connection_error",
    "is_driver_error",
    "parse_server_version",
    "translate",
    "translating",
    "validate_identifier",
]
