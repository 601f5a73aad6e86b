"""``shardbill reshard plan|prepare|run|status|verify|abort|revert``: online resharding.

Every action reads the same configuration file as the rest of the command
line. The shards to add must already be listed under ``[shards]`` (with
their URLs); the map in the map store decides which of them own slots.

* ``plan --add NAME[:W] | --remove NAME | --reweight NAME=W ... [--out FILE]``
  prints what would move and writes the target map (JSON) to ``FILE``
  (default ``reshard-target.json``).
* ``prepare --target FILE`` creates the new shards' tables and records no
  slot as theirs (the one safe way; ``run`` does it too).
* ``run [--target FILE]`` claims the reshard in the map store and executes
  it online (writers keep writing), or resumes the claimed one when no
  target is given. Ctrl-C stops it at the next safe point; run it again to
  resume. Progress (slots, rows, rate, ETA) is drawn on a terminal; with
  ``--json`` it goes to standard error as one JSON event per line.
* ``status [--target FILE]`` shows each moving slot (pending, fenced,
  finished) and who holds the claim, at every stage, before ``run`` too.
* ``verify`` checks every slot's owner, every row's place and every finished
  move's tally; exit 1 if not exact.
* ``abort --target FILE`` undoes a reshard that has not fenced any slot yet.
* ``revert`` moves a fenced or finished reshard back to the map before it,
  online, with the same guarantees.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from shardbill.cli._common import refuse_present_shard
from shardbill.config import Config, find_config
from shardbill.errors import ConfigurationError, ReshardStoppedError
from shardbill.resharding import Resharder, ReshardReport, ReshardSettings
from shardbill.shardmap import ShardMap
from shardbill.workloads.progress import interactive

__all__ = ["add_parser", "run"]

EXIT_DIFFERENCE = 1
EXIT_INTERRUPTED = 130


class _Format(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default, unless it is none (the help text says what none means)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False) or "(default" in text:
            return text
        return super()._get_help_string(action) or text


_FORMAT = _Format


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``reshard`` and its actions on the main parser's subcommands."""
    reshard = sub.add_parser(
        "reshard",
        help="add, remove or re-weight shards online",
        description="Move slots between shards while writers keep writing; resumable. "
        "A reshard is claimed in the map store first: one at a time, resumed or reverted, "
        "never replaced by another plan.",
        epilog="examples:\n"
        "  shardbill reshard plan --add s4 --config shardbill.toml\n"
        "  shardbill reshard prepare --target reshard-target.json --config shardbill.toml\n"
        "  shardbill reshard run --target reshard-target.json --config shardbill.toml\n"
        "  shardbill reshard status --config shardbill.toml\n"
        "  shardbill reshard run --config shardbill.toml      # resume after Ctrl-C or a crash\n"
        "  shardbill reshard verify --config shardbill.toml\n"
        "  shardbill reshard revert --config shardbill.toml   # back to the map before",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = reshard.add_subparsers(dest="reshard_command", metavar="ACTION", required=True)
    plan = actions.add_parser(
        "plan",
        help="what would move; writes the target map",
        description="Print the plan from the map in the store to a changed map, and write "
        "that target map (JSON) for `reshard run`. Changes nothing.",
        formatter_class=_FORMAT,
    )
    change = plan.add_mutually_exclusive_group(required=True)
    change.add_argument("--add", metavar="NAME[:WEIGHT]", help="add a shard (weight 1 if none)")
    change.add_argument("--remove", metavar="NAME", help="remove a shard")
    change.add_argument("--reweight", nargs="+", metavar="NAME=W", help="set shard weights")
    plan.add_argument("--out", default="reshard-target.json", help="where to write the target")
    prepare = actions.add_parser(
        "prepare",
        help="create the new shards' tables, owning no slot",
        description="Create the aggregate and system tables on the shards the target map "
        "adds, recording no slot as theirs. The one safe way to create a new shard's tables "
        "(a writer's ensure_schema() pointed at it would mark slots owned there); `run` "
        "does it too.",
        formatter_class=_FORMAT,
    )
    prepare.add_argument("--target", required=True, help="the target map from `reshard plan`")
    run_ = actions.add_parser(
        "run",
        help="execute (or resume) the reshard online",
        description="Claim the reshard in the map store, then fence, publish, copy and merge "
        "slot by slot while writers keep writing. Without --target, resume the claimed "
        "reshard. Ctrl-C stops at the next safe point (a second Ctrl-C stops at once); "
        "run again to resume.",
        formatter_class=_FORMAT,
    )
    run_.add_argument("--target", help="the target map from `reshard plan` (default: resume)")
    run_.add_argument("--chunk-rows", type=int, default=1000, help="rows per transaction")
    run_.add_argument("--parallel", type=int, default=4, help="slots moved at once")
    run_.add_argument(
        "--rows-per-second",
        type=float,
        default=None,
        help="throttle, all slots together (default: none)",
    )
    run_.add_argument(
        "--lease-seconds",
        type=float,
        default=30.0,
        help="the claim's lease; renewed every third of it while running",
    )
    status = actions.add_parser(
        "status",
        help="each moving slot: pending, fenced, finished",
        description="Count the moving slots by state, read from the shards, and show who "
        "holds the claim. Works at every stage, before `run` too (with --target).",
        formatter_class=_FORMAT,
    )
    status.add_argument(
        "--target", help="the target map (default: the claimed or published reshard)"
    )
    verify = actions.add_parser(
        "verify",
        help="check placement and finished moves; exit 1 on a difference",
        description="Read every shard the store has named and check: one owner per slot, "
        "the one the map names; nothing left incoming; forwarding leads to the owner; rows "
        "only on their owner; finished moves equal their manifests. Exit 1 if not exact.",
        formatter_class=_FORMAT,
    )
    abort = actions.add_parser(
        "abort",
        help="undo a reshard that fenced nothing yet",
        description="Remove the targets' incoming rows of a reshard that fenced no slot; "
        "after a fence, use `revert` (or `run` to finish).",
        formatter_class=_FORMAT,
    )
    abort.add_argument("--target", required=True, help="the target map from `reshard plan`")
    revert = actions.add_parser(
        "revert",
        help="move a fenced or finished reshard back to the map before it",
        description="Claim the revert of the last reshard (fenced, published or finished) "
        "and run it: every slot it moved goes back to its source, online, writes going on, "
        "exact; the map before is published again with a new epoch. Resumable like `run`.",
        formatter_class=_FORMAT,
    )
    revert.add_argument("--chunk-rows", type=int, default=1000, help="rows per transaction")
    revert.add_argument("--parallel", type=int, default=4, help="slots moved at once")
    for parser in (plan, prepare, run_, status, abort, verify, revert):
        parser.add_argument(
            "--config", metavar="FILE", help="configuration file (default: ./shardbill.toml)"
        )
        parser.add_argument(
            "--json", action="store_true", help="print one JSON object on standard output"
        )


def _target(args: argparse.Namespace, current: ShardMap) -> ShardMap:
    if args.add:
        name, _, weight = args.add.partition(":")
        if weight and not weight.isdigit():
            raise ConfigurationError(f"--add {args.add!r}: give NAME or NAME:WEIGHT, e.g. s4:2")
        refuse_present_shard(current, "--add", name)
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


def _progress_printer(args: argparse.Namespace) -> Callable[[ReshardReport], None]:
    """Progress as a terminal line (redrawn), or as JSON events on stderr with --json."""
    lock = threading.Lock()
    draw = interactive(sys.stderr)

    def show(report: ReshardReport) -> None:
        with lock:
            if args.json:
                print(json.dumps({"event": "progress", **report.to_dict()}), file=sys.stderr)
                return
            if not draw:
                return
            eta = report.eta_seconds
            sys.stderr.write(
                f"\r\x1b[2Kreshard: {report.slots_done}/{report.slots_total} slots, "
                f"{report.rows_moved + report.ledger_rows_moved} rows, "
                f"{report.rows_per_second:,.0f} rows/s, ETA "
                + ("?" if eta is None else f"{eta:,.0f} s")
            )
            sys.stderr.flush()
            if report.slots_done == report.slots_total:
                sys.stderr.write("\r\x1b[2K")

    return show


@contextmanager
def _stop_on_ctrl_c(resharder: Resharder) -> Iterator[None]:
    """The first Ctrl-C asks the resharder to stop at a safe point; a second one is final."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(_signum: int, _frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print(
            "\nshardbill: stopping at the next safe point (Ctrl-C again to stop at once)",
            file=sys.stderr,
        )
        resharder.stop()

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _state_line(resharder: Resharder) -> tuple[dict[str, object], str]:
    """The moving slots by state, and the claim, for `status` and after a stop."""
    slots = resharder.status()
    counts = Counter(s.state.value for s in slots)
    claim = resharder.claim()
    payload: dict[str, object] = {"slots": len(slots), **counts}
    if claim is not None:
        payload["claim"] = {
            "source_epoch": claim.source.epoch,
            "target_epoch": claim.target.epoch,
            "owner": claim.owner,
            "state": claim.state,
            "expires_at": claim.expires_at,
            "reverts": claim.reverts,
        }
    if not slots:
        text = "no reshard in progress; plan one with `shardbill reshard plan`"
    else:
        text = f"{len(slots)} moving slot(s): " + ", ".join(
            f"{n} {state}" for state, n in sorted(counts.items())
        )
    if claim is not None:
        text += f"\nclaim: {claim.describe()}"
    return payload, text


def run(args: argparse.Namespace) -> int:  # noqa: PLR0911 - one return per action
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
                lease_seconds=getattr(args, "lease_seconds", 30.0),
            ),
            on_progress=_progress_printer(args),
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
        if action == "prepare":
            shards = resharder.prepare(_load_target(args.target))
            _emit(
                args,
                {"prepared": shards},
                f"tables created on {', '.join(shards)} (no slot owned yet); run: shardbill "
                f"reshard run --target {args.target}"
                if shards
                else "the target map adds no shard: nothing to prepare",
            )
            return 0
        if action in ("run", "revert"):
            return _run(args, resharder, store)
        if action == "status":
            if args.target:
                slots = resharder.status(_load_target(args.target))
                counts = Counter(s.state.value for s in slots)
                _emit(
                    args,
                    {"slots": len(slots), **counts},
                    f"{len(slots)} moving slot(s): "
                    + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())),
                )
                return 0
            payload, text = _state_line(resharder)
            _emit(args, payload, text)
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
            else "cannot abort: slots are fenced already; run `shardbill reshard run` to finish "
            "or `shardbill reshard revert` to go back",
        )
        return 0 if undone else EXIT_DIFFERENCE


def _run(args: argparse.Namespace, resharder: Resharder, store: object) -> int:
    reverting = args.reshard_command == "revert"
    try:
        with _stop_on_ctrl_c(resharder):
            if reverting:
                progress = resharder.revert()
            else:
                progress = resharder.run(_load_target(args.target) if args.target else None)
    except ReshardStoppedError:
        payload, text = _state_line(resharder)
        again = "shardbill reshard revert" if reverting else "shardbill reshard run"
        _emit(
            args,
            {"stopped": True, **payload, "resume": again},
            f"stopped at a safe point: {text}\nfenced slots already take writes on their "
            f"new shards; every step is recorded on the shards. Resume with: {again}",
        )
        return EXIT_INTERRUPTED
    epoch = store.load().epoch  # type: ignore[attr-defined]
    _emit(
        args,
        {
            "slots_finished": progress.slots_finished,
            "rows_moved": progress.rows_moved,
            "ledger_rows_moved": progress.ledger_rows_moved,
            "seconds": round(progress.seconds, 3),
            "epoch": epoch,
            "slots_empty": progress.slots_empty,
            "attempts": progress.attempts,
            "reverted": reverting,
        },
        f"{'revert' if reverting else 'reshard'} finished: {progress.slots_finished} slot(s) "
        f"({progress.slots_empty} empty), {progress.rows_moved} "
        f"aggregate rows and {progress.ledger_rows_moved} ledger rows moved in "
        f"{progress.seconds:.1f} s; map epoch {epoch}"
        + (
            f"; {progress.attempts} runs (transient failures ridden through)"
            if progress.attempts > 1
            else ""
        ),
    )
    return 0
