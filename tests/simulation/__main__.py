"""``python -m tests.simulation``: run the simulation from a seed, or for hours on every core.

Examples::

    python -m tests.simulation --seed 7 --steps 400
    python -m tests.simulation --seed 7 --steps 400 --all-features   # the known open bugs too
    python -m tests.simulation --long --hours 2 --workers 2

Exit status: 0 when no invariant was violated, 1 otherwise (the failure,
shrunk to a short trace, and its replay command are printed).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time

from tests.simulation.config import ALL_FEATURES, SAFE_FEATURES, SimConfig, describe_off
from tests.simulation.runner import RunReport, run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.simulation",
        description="Seeded, model-based simulation of shardbill's write path.",
    )
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument(
        "--seeds", type=int, default=1, help="how many seeds from --seed (default 1)"
    )
    parser.add_argument(
        "--steps", type=int, default=400, help="scheduler steps per seed (default 400)"
    )
    parser.add_argument("--backend", choices=("sqlite", "mariadb", "servers"), default="sqlite")
    parser.add_argument(
        "--all-features", action="store_true", help="also the features that hit known open bugs"
    )
    parser.add_argument(
        "--feature",
        action="append",
        default=[],
        choices=ALL_FEATURES,
        metavar="NAME",
        help="switch one feature on (repeatable); see tests/simulation/config.py",
    )
    parser.add_argument(
        "--without",
        action="append",
        default=[],
        choices=ALL_FEATURES,
        metavar="NAME",
        help="switch one feature off (repeatable)",
    )
    parser.add_argument(
        "--no-shrink", action="store_true", help="report the first failure as found"
    )
    parser.add_argument("--verbose", action="store_true", help="print hypothesis's progress")
    parser.add_argument("--long", action="store_true", help="run seeds on every core until --hours")
    parser.add_argument("--hours", type=float, default=1.0, help="--long: how long (default 1)")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="--long: processes (default: cores)",
    )
    return parser


def _config(args: argparse.Namespace) -> SimConfig:
    features = set(ALL_FEATURES if args.all_features else SAFE_FEATURES)
    features |= set(args.feature)
    features -= set(args.without)
    return SimConfig(features=frozenset(features), backend=args.backend)


def _one(job: tuple[int, int, SimConfig, bool]) -> RunReport:
    seed_value, steps, config, shrink = job
    return run(seed_value, steps, config, shrink=shrink)


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status."""
    args = _parser().parse_args(argv)
    config = _config(args)
    print(describe_off(config), flush=True)
    if args.long:
        return _long(args, config)
    failed = 0
    total = 0
    started = time.monotonic()
    for seed_value in range(args.seed, args.seed + args.seeds):
        report = run(
            seed_value, args.steps, config, shrink=not args.no_shrink, verbose=args.verbose
        )
        total += report.steps
        status = "ok" if report.failure is None else "FAILED"
        print(
            f"seed {seed_value}: {status}, {report.steps} steps in {report.examples} examples, "
            f"{report.seconds:.1f} s",
            flush=True,
        )
        if report.failure is not None:
            failed += 1
            print(report.failure, flush=True)
    seconds = time.monotonic() - started
    from tests.simulation.machine import SimMachine

    print("did: " + ", ".join(f"{k} {v}" for k, v in sorted(SimMachine.stats.items())))
    print(
        f"{total} steps in {seconds:.1f} s ({total / max(seconds, 1e-9):.1f} steps/s); "
        f"{failed} failing seed(s)"
    )
    return 1 if failed else 0


def _long(args: argparse.Namespace, config: SimConfig) -> int:
    deadline = time.monotonic() + args.hours * 3600
    started = time.monotonic()
    total = failed = seeds = 0
    next_seed = args.seed
    with multiprocessing.Pool(args.workers) as pool:
        while time.monotonic() < deadline:
            jobs = [(next_seed + i, args.steps, config, True) for i in range(args.workers)]
            next_seed += args.workers
            for report in pool.imap_unordered(_one, jobs):
                seeds += 1
                total += report.steps
                if report.failure is not None:
                    failed += 1
                    print(f"seed {report.seed}: FAILED\n{report.failure}", flush=True)
            elapsed = time.monotonic() - started
            print(
                f"{seeds} seeds, {total} steps, {elapsed:.0f} s, {total / elapsed:.1f} steps/s, "
                f"{failed} failing",
                flush=True,
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
