"""The ``shardbill`` command line (also ``python -m shardbill``).

Commands (``shardbill COMMAND --help`` shows each one's options and examples):

``demo``
    the main job on four SQLite shard files (no server needed), or on
    servers with ``--mysql URL ...`` or ``--config FILE``: a seeded day of
    skewed traffic priced and written exactly once, a replay, a fifth shard
    added online, an independent audit, a report.
``init``
    create the tables on every shard and publish the first shard map.
``ingest FILE``
    price and write the events of a JSON Lines or CSV file; bad lines go to
    a rejects file with their line numbers and reasons.
``audit [FILE ...]``
    recompute the expected aggregates independently (from events files, or
    from the demo's synthetic day) and compare them with the shards.
``map show`` / ``map plan``
    the live shard map; what adding, removing or re-weighting a shard would move.
``bench``
    throughput and commit latency per traffic model (uniform, skewed, hot).
``reshard plan|run|status|verify|abort``
    add, remove or re-weight shards online (:mod:`shardbill.cli.reshard`).
``prune``
    delete the ledger rows of events older than the dedup horizon
    (``--dry-run`` counts them).
``worker``
    consume usage events from Kafka in a consumer group and write them
    exactly once, committing offsets only after the ledger has them
    (:mod:`shardbill.cli.worker`).
``status``
    the fleet in one view: each shard's state, slots, rows and ledger, the
    map epoch, a reshard in progress; ``--watch`` adds write rates.
``period close YYYY-MM`` / ``period status [YYYY-MM]``
    close a billing period on every shard (two phases, idempotent), or show
    each period's state per shard (:mod:`shardbill.cli.period`).
``correct cancel|amend|list``
    cancel or amend applied events, each correction exactly once, with who,
    why and when recorded on the shards (:mod:`shardbill.cli.correct`).
``statement YYYY-MM``
    reproducible per-account statements of a closed period, JSON or CSV,
    with a sha256 checksum inside (:mod:`shardbill.cli.statement`).
``migrate``
    add new measures (0 in existing rows) and new tables to the live
    shards, shard by shard, resumably (``--dry-run`` shows the plan).

The configuration file comes from ``--config FILE``, else ``$SHARDBILL_CONFIG``,
else ``./shardbill.toml`` (see ``docs/reference/configuration.md``).
``--json`` prints exactly one JSON object on standard output. Progress bars
appear on standard error only when standard output is a terminal.

Exit codes:

===  ======================================================================
0    success: the audit is exact, every line was applied (or already was)
1    the job ran and found a problem: an audit difference, rejected lines
2    usage or configuration error: a bad option, configuration file, URL,
     schema, missing file or missing extra, or a database refusing what
     retrying cannot change (access denied, TLS verification, a grant)
3    a database stayed unreachable or kept failing past the retry budget
130  interrupted (Ctrl-C)
141  standard output closed by its reader (``... | head``): stops quietly
===  ======================================================================

Interrupting is safe: every batch is one transaction per shard (its ledger
rows and its UPSERTs commit together), so a batch is either applied whole or
not at all, and running the same command again completes the work exactly
once.

Each command lives in its own module, which registers it (``add_parser``)
and runs it (``run``): :mod:`shardbill.cli.demo`, :mod:`shardbill.cli.init`,
:mod:`shardbill.cli.ingest`, :mod:`shardbill.cli.audit`,
:mod:`shardbill.cli.map`, :mod:`shardbill.cli.bench`,
:mod:`shardbill.cli.reshard`, :mod:`shardbill.cli.prune`,
:mod:`shardbill.cli.status`, :mod:`shardbill.cli.migrate`,
:mod:`shardbill.cli.period`, :mod:`shardbill.cli.correct` and
:mod:`shardbill.cli.statement`; what several
of them share (option groups, ``--json`` and progress output,
:data:`EXIT_PROBLEM`) is in
:mod:`shardbill.cli._common`. This module builds the parser, dispatches, and
turns errors into the exit codes above.

Level: the top (``tests/test_layers.py``): may import anything; nothing imports it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from shardbill._version import __version__
from shardbill.cli import _common as cli_common
from shardbill.cli import audit as cli_audit
from shardbill.cli import bench as cli_bench
from shardbill.cli import correct as cli_correct
from shardbill.cli import demo as cli_demo
from shardbill.cli import ingest as cli_ingest
from shardbill.cli import init as cli_init
from shardbill.cli import map as cli_map
from shardbill.cli import migrate as cli_migrate
from shardbill.cli import period as cli_period
from shardbill.cli import prune as cli_prune
from shardbill.cli import reshard as cli_reshard
from shardbill.cli import statement as cli_statement
from shardbill.cli import status as cli_status
from shardbill.cli import worker as cli_worker
from shardbill.cli._common import Formatter
from shardbill.errors import (
    ConfigurationError,
    DriverNotInstalledError,
    FatalDatabaseError,
    InvalidInputError,
    ShardbillError,
)

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_DATABASE",
    "EXIT_INTERRUPTED",
    "EXIT_PROBLEM",
    "EXIT_USAGE",
    "main",
]

EXIT_PROBLEM = cli_common.EXIT_PROBLEM
"""The job ran and found a problem (an audit difference, rejected lines)."""
EXIT_USAGE = 2
"""A usage or configuration error."""
EXIT_DATABASE = 3
"""A database stayed unreachable or kept failing; nothing is half-written: run again."""
EXIT_INTERRUPTED = cli_common.EXIT_INTERRUPTED
"""Interrupted (Ctrl-C)."""
EXIT_BROKEN_PIPE = 141
"""Standard output was closed by its reader (``shardbill map plan | head -3``); 128 + SIGPIPE,
as a shell reports for a command a closed pipe stopped. Nothing is printed."""


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shardbill",
        description="Price usage events and write them exactly once into sharded aggregates.",
        epilog="examples:\n"
        "  shardbill demo                 the main job on SQLite files, no server needed\n"
        "  shardbill demo --help          the options of one command\n\n"
        "exit codes: 0 ok, 1 audit difference or rejected lines, 2 usage or configuration\n"
        "error, 3 database unavailable, 130 interrupted, 141 output pipe closed",
        formatter_class=Formatter,
    )
    parser.add_argument("--version", action="version", version=f"shardbill {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log what the writer does (to stderr)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (
        cli_demo,
        cli_init,
        cli_ingest,
        cli_audit,
        cli_map,
        cli_bench,
        cli_reshard,
        cli_prune,
        cli_worker,
        cli_status,
        cli_migrate,
        cli_period,
        cli_correct,
        cli_statement,
    ):
        module.add_parser(sub)
    return parser


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": cli_demo.run,
    "init": cli_init.run,
    "ingest": cli_ingest.run,
    "audit": cli_audit.run,
    "map": cli_map.run,
    "bench": cli_bench.run,
    "reshard": cli_reshard.run,
    "prune": cli_prune.run,
    "worker": cli_worker.run,
    "status": cli_status.run,
    "migrate": cli_migrate.run,
    "period": cli_period.run,
    "correct": cli_correct.run,
    "statement": cli_statement.run,
}


def _error(message: object) -> None:
    print(f"shardbill: error: {message}", file=sys.stderr)


def _silence_stdout() -> None:
    """Point standard output at /dev/null, so the interpreter's final flush cannot fail again.

    The way the Python documentation gives for a reader that closed the pipe
    (``signal`` in the library docs, "Note on SIGPIPE").
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code (see the module docstring)."""
    try:
        return _main(argv)
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    try:
        args = _build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (argparse printed it)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        code = _COMMANDS[args.command](args)
        sys.stdout.flush()  # inside the try: a closed pipe must fail here, not at exit
        return code
    except KeyboardInterrupt:
        _error(
            "interrupted; every batch either committed whole or not at all: run the same "
            "command again to finish (the ledger skips what was applied)"
        )
        return EXIT_INTERRUPTED
    except (
        ConfigurationError,
        DriverNotInstalledError,
        InvalidInputError,
        FatalDatabaseError,  # denied, TLS refused, a grant missing: retrying cannot fix it
    ) as exc:
        _error(f"{type(exc).__name__}: {exc}" if isinstance(exc, FatalDatabaseError) else exc)
        return EXIT_USAGE
    except ShardbillError as exc:  # DatabaseError and what resharding raises
        _error(f"{type(exc).__name__}: {exc}")
        return EXIT_DATABASE
    except BrokenPipeError:
        raise  # the reader went away: main() ends quietly
    except OSError as exc:
        _error(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        return EXIT_USAGE
