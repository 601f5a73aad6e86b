"""``shardbill init``: create the tables on every shard and publish the first shard map.

First checks what ``ingest`` would need: the rules engine is built (rule
names, ``import``, the price book). Then, with the map in the configuration
file's map store (or, if it holds none, the first map: every shard of
``[shards]``, with ``[weights]``), it creates the aggregate, ledger and slot
tables on every shard of the map
(:meth:`shardbill.writer.AggregationWriter.ensure_schema`: a no-op where they
exist, an error for a table of another shape), checks that every shard's
slot table lets it write the slots the map gives it (a database written for
another shard map, by a demo or another deployment, would refuse every such
event), and only then publishes a first map. Running it again changes
nothing. Prints the shards, the tables and
the map's epoch (``--json``: one object with ``shards``, ``tables``,
``map_epoch``, ``slots``, ``published`` and ``map_store``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shardbill.cli._common import (
    add_config_and_json,
    command,
    load_config,
    print_json,
    require_urls,
)

if TYPE_CHECKING:
    import argparse

    from shardbill.cli._common import Subparsers
    from shardbill.config import Config
    from shardbill.providers.base import ConnectionProvider
    from shardbill.shardmap import ShardMap

__all__ = ["add_parser", "run"]


def add_parser(sub: Subparsers) -> None:
    """Register ``init`` on the main parser's subcommands."""
    init = command(
        sub,
        "init",
        "create the tables on every shard and publish the first shard map",
        "Create the aggregate, ledger and slot tables on every shard of the map (a no-op "
        "where they exist; a table of another shape is an error), and publish the first shard "
        "map (every shard of [shards], with [weights]) to the map store if it holds none.",
        "  shardbill init --config shardbill.toml",
    )
    add_config_and_json(init)


def run(args: argparse.Namespace) -> int:
    """Run ``init``; returns the exit code."""
    from shardbill.errors import MapNotPublishedError
    from shardbill.resharding import SqlMapStore
    from shardbill.writer import AggregationWriter

    config = load_config(args)
    config.rules.engine()  # unknown rules, a bad import, a missing price book: fail here
    with config.open() as opened:
        store = opened.map_store
        if isinstance(store, SqlMapStore):
            store.ensure_schema()
        try:
            current = store.load()
            published = False
        except MapNotPublishedError:
            current = config.initial_map()
            published = True  # once the shards are checked: a refused setup publishes nothing
        require_urls(config, current.shards)
        with AggregationWriter(
            shard_map=current,
            provider=opened.provider,
            tables=config.tables,
            settings=config.writer.settings(),
        ) as writer:
            writer.ensure_schema()
        _check_slot_tables(opened.provider, current, config)
        if published:
            store.publish(current, expected_epoch=None)
    shards = sorted(current.shards)
    if args.json:
        print_json(
            {
                "shards": shards,
                "tables": [t.name for t in config.tables],
                "map_epoch": current.epoch,
                "slots": current.slots,
                "published": published,
                "map_store": config.map_store.describe(),
            }
        )
        return 0
    print(f"schema ready on {len(shards)} shards: {', '.join(shards)}")
    print(f"  tables: {', '.join(t.name for t in config.tables)} (+ ledger and slot tables)")
    verb = "published" if published else "already holds"
    print(
        f"  map store ({config.map_store.describe()}) {verb} epoch {current.epoch}: "
        f"{current.slots} slots over {len(shards)} shards"
    )
    return 0


def _check_slot_tables(provider: ConnectionProvider, current: ShardMap, config: Config) -> None:
    """Raise unless every shard's slot table lets it write every slot ``current`` gives it.

    In one deployment that always holds: the first ``init`` records the map's
    slots as owned, and a reshard marks a slot incoming on its target before
    the map routes it there. A slot the map gives a shard that its table does
    not (no row, or ``gone``) means the database was written for another map.

    Raises:
        ConfigurationError: naming the shard, some slots, and what to do.
    """
    from shardbill.dialects.detect import dialect_for
    from shardbill.errors import ConfigurationError
    from shardbill.tables import SlotState
    from shardbill.tables.aggregates import SLOT_COLUMN

    writable = {SlotState.OWNED.value, SlotState.INCOMING.value}
    table = config.writer.settings().system_tables.slots
    for shard in sorted(current.shards):
        with provider.connection(shard) as conn:  # the primary: a replica may lag
            cursor = conn.cursor()
            try:
                quoted = dialect_for(conn).quote(table)
                cursor.execute(f"SELECT {SLOT_COLUMN}, state FROM {quoted}", ())
                states = {int(slot): str(state) for slot, state in cursor.fetchall()}
            finally:
                cursor.close()
        refused = [s for s in current.slots_of(shard) if states.get(s) not in writable]
        if refused:
            gone = sum(1 for s in refused if s in states)
            raise ConfigurationError(
                f"shard {shard!r} ({config.shards[shard]}): its slot table {table} does not let "
                f"it write {len(refused)} of the {len(current.slots_of(shard))} slots the map "
                f"(epoch {current.epoch}) gives it (e.g. slots {refused[:5]}; {gone} marked gone, "
                f"{len(refused) - gone} not recorded): this database was written for another "
                "shard map (a demo, another deployment, an older map store). Give this shard an "
                "empty database (or file), or point [map_store] at the map this database "
                "belongs to; as it is, ingest would refuse every event of those slots"
            )
