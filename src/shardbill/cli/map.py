"""``shardbill map show`` / ``map plan``: the live shard map, and what a change would move.

Both load the map the configuration's map store holds (every shard of it
must have a URL under ``[shards]``).

* ``show`` prints its epoch, slot count and, per shard, weight, slots and
  share, and whether the slots are within one of the weights.
* ``plan --add NAME[:WEIGHT] | --remove NAME | --reweight NAME=W ...`` prints
  which slots the change would move, per shard and per flow, and notes the
  shards of the target that have no URL yet. A plan only: nothing is
  published (``shardbill reshard``, :mod:`shardbill.cli.reshard`, executes one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shardbill.cli._common import (
    add_config_and_json,
    command,
    live_map,
    load_config,
    print_json,
    refuse_present_shard,
    table,
)
from shardbill.errors import ConfigurationError

if TYPE_CHECKING:
    import argparse

    from shardbill.cli._common import Subparsers
    from shardbill.config import Config
    from shardbill.shardmap import ShardMap

__all__ = ["add_parser", "run"]


def add_parser(sub: Subparsers) -> None:
    """Register ``map`` and its actions on the main parser's subcommands."""
    mapping = command(
        sub,
        "map",
        "show the live shard map, or plan a change to it",
        "Show the shard map of the map store, or print what adding, removing or re-weighting "
        "a shard would move (a plan only: nothing is published).",
        "  shardbill map show\n"
        "  shardbill map plan --add s4\n"
        "  shardbill map plan --add s4:2 --json\n"
        "  shardbill map plan --remove s0\n"
        "  shardbill map plan --reweight s1=2 s2=2",
    )
    map_sub = mapping.add_subparsers(dest="map_command", metavar="ACTION", required=True)
    show = command(
        map_sub,
        "show",
        "slots per shard, weights, balance and epoch",
        "Print the live map: epoch, slot count, and per shard its weight, slots and share.",
        "  shardbill map show --config shardbill.toml --json",
    )
    add_config_and_json(show)
    plan = command(
        map_sub,
        "plan",
        "what a change would move (ReshardPlan summary)",
        "Plan a change to the live map and print which slots would move, per shard.",
        "  shardbill map plan --add s4\n  shardbill map plan --reweight s0=2 s1=2",
    )
    change = plan.add_mutually_exclusive_group(required=True)
    change.add_argument(
        "--add", metavar="NAME[:WEIGHT]", help="add a shard (weight 1 if not given)"
    )
    change.add_argument("--remove", metavar="NAME", help="remove a shard")
    change.add_argument("--reweight", nargs="+", metavar="NAME=W", help="set shard weights")
    add_config_and_json(plan)


def run(args: argparse.Namespace) -> int:
    """Run ``map show`` or ``map plan``; returns the exit code."""
    config = load_config(args)
    with config.open() as opened:
        current = live_map(config, opened.map_store)
    if args.map_command == "show":
        return _map_show(args, config, current)
    return _map_plan(args, config, current)


def _map_show(args: argparse.Namespace, config: Config, current: ShardMap) -> int:
    counts, weights = current.slot_counts, current.shards
    if args.json:
        print_json(
            {
                "epoch": current.epoch,
                "slots": current.slots,
                "balanced": current.is_balanced(),
                "map_store": config.map_store.describe(),
                "shards": {
                    s: {
                        "weight": weights[s],
                        "slots": counts[s],
                        "share": round(counts[s] / current.slots, 6),
                    }
                    for s in weights
                },
            }
        )
        return 0
    print(
        f"shard map epoch {current.epoch}: {current.slots} slots over {len(weights)} shards "
        f"({config.map_store.describe()})"
    )
    rows = [("shard", "weight", "slots", "share")]
    rows += [
        (s, str(weights[s]), str(counts[s]), f"{counts[s] / current.slots:.2%}") for s in weights
    ]
    print(table(rows))
    state = "exact to one slot" if current.is_balanced() else "NOT within one slot of the weights"
    print(f"balance: {state} (slots per shard {min(counts.values())}-{max(counts.values())})")
    return 0


def _map_plan(args: argparse.Namespace, config: Config, current: ShardMap) -> int:
    if args.add:
        name, _, weight = args.add.partition(":")
        refuse_present_shard(current, "--add", name)
        target = current.add_shard(name, int(weight) if weight.isdigit() else _weight(weight))
    elif args.remove:
        target = current.remove_shard(args.remove)
    else:
        target = current.reweight(dict(_assignment(item) for item in args.reweight))
    plan = current.plan_to(target)
    no_url = sorted(set(target.shards) - set(config.shards))
    if args.json:
        print_json(
            {
                "source_epoch": plan.source_epoch,
                "target_epoch": plan.target_epoch,
                "slots": plan.slots,
                "moved_slots": len(plan.moves),
                "moved_fraction": plan.moved_fraction,
                "changes": [
                    {
                        "shard": c.shard,
                        "before": c.before,
                        "after": c.after,
                        "gives": c.gives,
                        "receives": c.receives,
                    }
                    for c in plan.changes
                ],
                "flows": [
                    {"source": s, "target": t, "slots": n} for (s, t), n in plan.flows.items()
                ],
                "shards_without_url": no_url,
            }
        )
        return 0
    print(plan.summary())
    for (source, target_shard), count in plan.flows.items():
        print(f"  {source} -> {target_shard}: {count} slots")
    if no_url:
        print(f"note: add a URL to [shards] for {', '.join(no_url)} before executing this plan")
    print("(a plan only: nothing was published)")
    return 0


def _weight(text: str) -> int:
    if not text:
        return 1
    raise ConfigurationError(f"--add NAME:WEIGHT needs a positive integer weight, got {text!r}")


def _assignment(item: str) -> tuple[str, int]:
    name, sep, weight = item.partition("=")
    if not sep or not weight.isdigit() or int(weight) < 1:
        raise ConfigurationError(f"--reweight takes NAME=WEIGHT with a positive integer: {item!r}")
    return name, int(weight)
