"""Connection providers: how shardbill borrows a database connection for a shard.

* :class:`ConnectionProvider` is the interface (a with-block per transaction);
  :class:`DBAPIConnection` and :class:`DBAPICursor` describe what it lends.
* :class:`PooledProvider` implements it over bounded per-server pools, from
  URLs (:class:`ConnectionURL`): ``mysql+pymysql://``, ``mysql+mysqldb://``,
  ``sqlite:///``.
  Its :meth:`~PooledProvider.route` picks one server (a healthy, current
  enough replica, else the primary) for a read: a :class:`ReadRoute`;
  :meth:`~PooledProvider.replicas` reports each replica's health and lag
  (:class:`ReplicaStatus`).
* :func:`transaction` and :func:`check_params` help custom providers.

Importing this package never imports a MySQL driver: PyMySQL or mysqlclient
is imported when a provider first needs it.

Level: above the dialects, below the map stores and the writer
(``tests/test_layers.py``).
"""

from shardbill.providers.base import (
    ConnectionProvider,
    DBAPIConnection,
    DBAPICursor,
    ParameterTypeError,
    Row,
    SQLValue,
    check_params,
    transaction,
)
from shardbill.providers.pool import ConnectionPool, LentConnection, LentCursor, PoolStats
from shardbill.providers.pooled import PooledProvider, ReadRoute, ReplicaStatus
from shardbill.providers.url import ConnectionURL, Secret, SSLMode

__all__ = [
    "ConnectionPool",
    "ConnectionProvider",
    "ConnectionURL",
    "DBAPIConnection",
    "DBAPICursor",
    "LentConnection",
    "LentCursor",
    "ParameterTypeError",
    "PoolStats",
    "PooledProvider",
    "ReadRoute",
    "ReplicaStatus",
    "Row",
    "SQLValue",
    "SSLMode",
    "Secret",
    "check_params",
    "transaction",
]
