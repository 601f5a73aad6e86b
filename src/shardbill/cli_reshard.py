"""``shardbill reshard plan|run|status|verify|abort``: online resharding from the command line.

Every action reads the same configuration file as the rest of the command
line. The shards to add must already be listed under ``[shards]`` (with
their URLs); the map in the map store decides which of them own slots.

* ``plan --add NAME[:W] | --remove NAME | --reweight NAME=W ... [--out FILE]``
  prints what would move and writes the target map (JSON) to ``FILE``
  (default ``reshard-target.json``).
* ``run [--target FILE]`` executes the plan online (writers keep writing),
  or resumes the reshard in progress when no target is given. Safe to run
  again after a crash or Ctrl-C: every step is recorded on the shards.
* ``status [--target FILE]`` shows each moving slot: pending, fenced,
  finished.
* ``verify`` checks that every row sits on the shard the map names and that
  every finished move merged exactly what its source held; exit 1 if not.
* ``abort --target FILE`` undoes a reshard that has not fenced any slot yet.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from shardbill.config import Config, find_config
from shardbill.errors import ConfigurationError
from shardbill.resharding import Resharder, ReshardSettings
from shardbill.shardmap import ShardMap

__all__ = ["add_parser", "run"]

EXIT_DIFFERENCE = 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``reshard`` and its actions on the main parser's subcommands."""
    reshard = sub.add_parser(
        "reshard",
        help="add, remove or re-weight shards online",
        description="Move slots between shards while writers keep writing; resumable.",
        epilog="examples:\n"
        "  shardbill reshard plan --add s4 --config shardbill.toml\n"
        "  shardbill reshard run --target reshard-target.json --config shardbill.toml\n"
        "  shardbill reshard status --config shardbill.toml\n"
        "  shardbill reshard verify --config shardbill.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = reshard.add_subparsers(dest="reshard_command", metavar="ACTION", required=True)
    plan = actions.add_parser("plan", help="what would move; writes the target map")
    change = plan.add_mutually_exclusive_group(required=True)
    change.add_argument("--add", metavar="NAME[:WEIGHT]", help="add a shard")
    change.add_argument("--remove", metavar="NAME", help="remove a shard")
    change.add_argument("--reweight", nargs="+", metavar="NAME=W", help="set shard weights")
    plan.add_argument("--out", default="reshard-target.json", help="where to write the target")
    run_ = actions.add_parser("run", help="execute (or resume) the reshard online")
    run_.add_argument("--target", help="the target map from `reshard plan` (default: resume)")
    run_.add_argument("--chunk-rows", type=int, default=1000, help="rows per transaction")
    run_.add_argument("--parallel", type=int, default=4, help="slots moved at once")
    run_.add_argument(
        "--rows-per-second", type=float, default=None, help="throttle (all slots together)"
    )
    status = actions.add_parser("status", help="each moving slot: pending, fenced, finished")
    status.add_argument("--target", help="the target map (default: the published one)")
    actions.add_parser("verify", help="check placement and finished moves; exit 1 on a difference")
    abort = actions.add_parser("abort", help="undo a reshard that fenced nothing yet")
    abort.add_argument("--target", required=True, help="the target map from `reshard plan`")
    for parser in (plan, run_, status, abort, actions.choices["verify"]):
        parser.add_argument(
            "--config", metavar="FILE", help="configuration file (default ./shardbill.toml)"
        )
        parser.add_argument("--json", action="store_true", help="print one JSON object")


def _target(args: argparse.Namespace, current: ShardMap) -> ShardMap:
    if args.add:
        name, _, weight = args.add.partition(":")
        if weight and not weight.isdigit():
            raise ConfigurationError(f"--add {args.add!r}: give NAME or NAME:WEIGHT, e.g. s4:2")
        return current.add_shard(name, int(weight) if weight else 1)
    if args.remove:
        return current.remove_shard(args.remove)
    weights = {}
    for item in args.reweight:
        name, _, weight = item.partition("=")
        if not weight.isdigit():
            raise ConfigurationError(f"--reweight {item!r}: give NAME=WEIGHT, e.g. s1=2")
        weights[name] = int(weight)
    return current.reweight(weights)


def _load_target(path: str) -> ShardMap:
    try:
        return ShardMap.from_json(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(
            f"{path}: cannot read the target map ({exc.strerror}); run `shardbill reshard plan`"
        ) from None


def _emit(args: argparse.Namespace, payload: dict[str, object], text: str) -> None:
    if args.json:
        print(json.dumps(payload, default=str))
    else:
        print(text)


def run(args: argparse.Namespace) -> int:
    """Run one ``reshard`` action; returns the exit code."""
    config = Config.load(find_config(args.config))
    with config.open() as opened:
        store = opened.map_store
        current = store.load()
        resharder = Resharder(
            store=store,
            provider=opened.provider,
            tables=config.tables,
            settings=ReshardSettings(
                chunk_rows=getattr(args, "chunk_rows", 1000),
                parallel_slots=getattr(args, "parallel", 4),
                rows_per_second=getattr(args, "rows_per_second", None),
            ),
        )
        action = args.reshard_command
        if action == "plan":
            target = _target(args, current)
            missing = sorted(set(target.shards) - set(config.shards))
            if missing:
                raise ConfigurationError(
                    f"{config.source}: shards {missing} have no URL under [shards]; add them "
                    "first (the new servers must exist and be reachable)"
                )
            plan = current.plan_to(target)
            Path(args.out).write_text(target.to_json(), encoding="utf-8")
            _emit(
                args,
                {
                    "from_epoch": current.epoch,
                    "to_epoch": target.epoch,
                    "moves": len(plan.moves),
                    "moved_fraction": plan.moved_fraction,
                    "target": args.out,
                },
                f"{plan.summary()}\ntarget map written to {args.out}; run: "
                f"shardbill reshard run --target {args.out}",
            )
            return 0
        if action == "run":
            progress = resharder.run(_load_target(args.target) if args.target else None)
            _emit(
                args,
                {
                    "slots_finished": progress.slots_finished,
                    "rows_moved": progress.rows_moved,
                    "ledger_rows_moved": progress.ledger_rows_moved,
                    "seconds": round(progress.seconds, 3),
                    "epoch": store.load().epoch,
                    "slots_empty": progress.slots_empty,
                    "attempts": progress.attempts,
                },
                f"reshard finished: {progress.slots_finished} slot(s) "
                f"({progress.slots_empty} empty), {progress.rows_moved} "
                f"aggregate rows and {progress.ledger_rows_moved} ledger rows moved in "
                f"{progress.seconds:.1f} s; map epoch {store.load().epoch}"
                + (
                    f"; {progress.attempts} runs (transient failures ridden through)"
                    if progress.attempts > 1
                    else ""
                ),
            )
            return 0
        if action == "status":
            slots = resharder.status(_load_target(args.target) if args.target else None)
            counts = Counter(s.state for s in slots)
            _emit(
                args,
                {"slots": len(slots), **counts},
                f"{len(slots)} moving slot(s): "
                + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())),
            )
            return 0
        if action == "verify":
            problems = resharder.verify()
            _emit(
                args,
                {"exact": not problems, "problems": problems},
                "verify: exact" if not problems else "\n".join(["verify: DIFFERENT", *problems]),
            )
            return EXIT_DIFFERENCE if problems else 0
        undone = resharder.abort(_load_target(args.target))
        _emit(
            args,
            {"aborted": undone},
            "aborted: every slot stays with its source"
            if undone
            else "cannot abort: slots are fenced already; run `shardbill reshard run` to finish",
        )
        return 0 if undone else EXIT_DIFFERENCE
