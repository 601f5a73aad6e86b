"""``shardbill init``: create the tables on every shard and publish the first shard map.

With the configuration file's map store, publishes the first shard map (every
shard of ``[shards]``, with ``[weights]``) if the store holds none, then
creates the aggregate, ledger and slot tables on every shard of the map
(:meth:`shardbill.writer.AggregationWriter.ensure_schema`: a no-op where they
exist, an error for a table of another shape). Running it again changes
nothing. Prints the shards, the tables and the map's epoch (``--json``: one
object with ``shards``, ``tables``, ``map_epoch``, ``slots``, ``published``
and ``map_store``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shardbill.cli_common import (
    add_config_and_json,
    command,
    load_config,
    print_json,
    require_urls,
)

if TYPE_CHECKING:
    import argparse

    from shardbill.cli_common import Subparsers

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
    with config.open() as opened:
        store = opened.map_store
        if isinstance(store, SqlMapStore):
            store.ensure_schema()
        try:
            current = store.load()
            published = False
        except MapNotPublishedError:
            current = config.initial_map()
            store.publish(current, expected_epoch=None)
            published = True
        require_urls(config, current.shards)
        with AggregationWriter(
            shard_map=current,
            provider=opened.provider,
            tables=config.tables,
            settings=config.writer.settings(),
        ) as writer:
            writer.ensure_schema()
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
