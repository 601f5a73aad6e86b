"""``shardbill migrate``: add measures, key columns and tables to the live shards.

See :mod:`shardbill.migrate`. Compares every configured shard's tables with
the configuration's declaration and applies what a shard lacks, shard by
shard, one step at a time (a new measure: ``ADD COLUMN ... DEFAULT 0``; a
new key column: its ``existing`` value in the rows that exist, the primary
key grown by an online ``ALTER`` on MySQL/MariaDB or a table rebuild on
SQLite; a new table: created empty), printing each step as it is done.
``--dry-run`` prints the plan and changes nothing. Interrupted, it is
resumed by running it again. A change no online migration makes (a key
column without ``existing``, a type) exits 2 naming it, before anything
changes. ``--json`` prints one object: ``dry_run``, ``steps`` (each
``shard``, ``table``, ``column``, ``kind``, ``existing``, ``text``) and
``migrated`` (whether the shards now match the declaration).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from shardbill.cli._common import (
    EXIT_INTERRUPTED,
    add_config_and_json,
    command,
    load_config,
    print_json,
)

if TYPE_CHECKING:
    import argparse

    from shardbill.cli._common import Subparsers
    from shardbill.migrate import MigrationStep

__all__ = ["add_parser", "run"]


def add_parser(sub: Subparsers) -> None:
    """Register ``migrate`` on the main parser's subcommands."""
    migrate = command(
        sub,
        "migrate",
        "add new measures, key columns and tables to the live shards, shard by shard",
        "Compare every shard's tables with the configuration's [aggregates] and add what a "
        "shard lacks: a new measure as a column with 0 in existing rows, a new key column "
        "with its `existing` value in existing rows (the primary key grows), a new table "
        "empty. Writers keep writing (those with the old configuration do not see the new "
        "column, on SQLite not after a key column; those with the new one refuse a shard "
        "until it is migrated). Resumable: run it again after an interruption. A key column "
        "without `existing` or a type change is refused (exit 2).",
        "  shardbill migrate --dry-run --config prod.toml\n"
        "  shardbill migrate --config prod.toml\n"
        "  shardbill migrate --json",
    )
    migrate.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    add_config_and_json(migrate)


def run(args: argparse.Namespace) -> int:
    """Run ``migrate``; returns the exit code."""
    from shardbill.migrate import migrate, plan_migration

    config = load_config(args)
    shards = list(config.shards)
    system = config.writer.settings().system_tables
    done: list[MigrationStep] = []

    def show(step: MigrationStep) -> None:
        done.append(step)
        if not args.json:
            print(step.describe(), flush=True)

    with config.open() as opened:
        if args.dry_run:
            steps = plan_migration(opened.provider, shards, config.tables, system_tables=system)
            if args.json:
                print_json(
                    {"dry_run": True, "steps": [s.to_dict() for s in steps], "migrated": not steps}
                )
            else:
                for step in steps:
                    print(f"would {step.describe()}")
                print(f"{len(steps)} step(s) to migrate" if steps else "nothing to migrate")
            return 0
        try:
            migrate(opened.provider, shards, config.tables, system_tables=system, on_step=show)
        except KeyboardInterrupt:
            print(
                f"shardbill: interrupted after {len(done)} step(s); every step done stays "
                "done. Run the same command again to finish: it plans from the shards as they "
                "are now.",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
    if args.json:
        print_json({"dry_run": False, "steps": [s.to_dict() for s in done], "migrated": True})
    else:
        print(
            f"migrated: {len(done)} step(s) on {len({s.shard for s in done})} shard(s); "
            f"all {len(shards)} shards match the configuration"
            if done
            else f"nothing to migrate: all {len(shards)} shards match the configuration"
        )
    return 0
