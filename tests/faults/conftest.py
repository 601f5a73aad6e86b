"""Fixtures of the fault suite: the driver under test and a (proxied) shard set factory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, Unpack

import pytest

from tests.faults.cluster import DRIVERS, ShardCluster
from tests.support.server_fixtures import ServerFactory
from tests.support.servers import SettingsKwargs


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest) -> str:
    """Each scenario runs with PyMySQL and with mysqlclient."""
    driver_name: str = request.param
    return driver_name


class ClusterFactory(Protocol):
    """What the ``make_cluster`` fixture returns."""

    def __call__(
        self,
        *,
        servers: int = 1,
        shards: int = 3,
        proxied: bool = True,
        schema: bool = True,
        **settings: Unpack[SettingsKwargs],
    ) -> ShardCluster:
        """Start ``servers`` private servers and spread ``shards`` shards over them."""
        ...


@pytest.fixture
def make_cluster(private_servers: ServerFactory, driver: str) -> Iterator[ClusterFactory]:
    """A factory of shard sets on private servers (proxied by default), all closed after."""
    made: list[ShardCluster] = []

    def factory(
        *,
        servers: int = 1,
        shards: int = 3,
        proxied: bool = True,
        schema: bool = True,
        **settings: Unpack[SettingsKwargs],
    ) -> ShardCluster:
        started = private_servers(servers, **settings)
        cluster = ShardCluster(started, driver=driver, shards=shards, proxied=proxied)
        made.append(cluster)
        if schema:
            cluster.ensure_schema()
        return cluster

    yield factory
    for cluster in made:
        cluster.close()
