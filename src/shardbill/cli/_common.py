"""What the ``shardbill`` sub-commands share: option groups, output helpers, deployment checks.

:mod:`shardbill.cli` builds the parser and dispatches; each command lives in
its own ``shardbill.cli.*`` module (``add_parser(sub)`` registers it,
``run(args)`` runs it) and takes from here:

* :data:`EXIT_PROBLEM`, the exit code of a command that ran and found a
  problem (the other exit codes belong to :func:`shardbill.cli.main`);
* the help :class:`Formatter` and :func:`command`, which adds a sub-command with its
  summary, description and examples;
* the option groups several commands take alike: :func:`add_config_and_json`
  (``--config FILE`` and ``--json``), :func:`add_servers` (``--mysql URL ...``
  or ``--config FILE`` instead of SQLite files), :func:`add_format`,
  :func:`add_traffic` (the synthetic day's ``--events``, ``--seed`` and ``--model``);
* the helpers behind those options: :func:`load_config`, :func:`servers`,
  :func:`print_json`, :func:`progress_bars`, :func:`say`;
* the checks on a configured deployment: :func:`live_map`, :func:`require_urls`;
* :func:`table`, the plain-text table of ``map show`` and ``bench``.

This module imports no command module and nothing heavy: database drivers,
the writer and the rest load when a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from shardbill.errors import ConfigurationError

if TYPE_CHECKING:
    from shardbill.config import Config
    from shardbill.providers.url import ConnectionURL
    from shardbill.resharding import MapStore
    from shardbill.shardmap import ShardMap

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = [
    "DEMO_EVENTS",
    "DEMO_SEED",
    "EXIT_INTERRUPTED",
    "EXIT_PROBLEM",
    "MODELS",
    "Formatter",
    "add_config",
    "add_config_and_json",
    "add_format",
    "add_json",
    "add_servers",
    "add_traffic",
    "command",
    "live_map",
    "load_config",
    "parse_urls",
    "positive",
    "print_json",
    "progress_bars",
    "require_urls",
    "say",
    "servers",
    "table",
]

EXIT_PROBLEM = 1
"""What a command returns when it ran and found a problem (``shardbill.cli.EXIT_PROBLEM``)."""
EXIT_INTERRUPTED = 130
"""What a command that handled Ctrl-C itself returns (``shardbill.cli.EXIT_INTERRUPTED``)."""

DEMO_EVENTS = 100_000
"""Distinct events of the demo's synthetic day (``demo`` and ``audit`` without FILE)."""
DEMO_SEED = 7
"""Seed of the demo's synthetic day."""
MODELS = ("uniform", "skewed", "hot")
"""The traffic models of :class:`shardbill.workloads.synthetic.Traffic`."""


# --------------------------------------------------------------------------- parser


class Formatter(argparse.HelpFormatter):
    """Wraps descriptions, keeps the examples' lines as written, shows real defaults."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "\n".join(indent + line for line in text.splitlines())
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def command(
    sub: Subparsers,
    name: str,
    summary: str,
    description: str,
    examples: str,
) -> argparse.ArgumentParser:
    """Add the sub-command ``name`` to ``sub``.

    Args:
        sub: the sub-commands of the main parser (or of a command, like ``map``).
        name: the command's name.
        summary: its line in the parent's list of commands.
        description: what ``--help`` says first (wrapped).
        examples: command lines, one a line, each indented by two spaces.

    Returns:
        The command's parser, to add its options to.
    """
    return sub.add_parser(
        name,
        help=summary,
        description=description,
        epilog="examples:\n" + examples,
        formatter_class=Formatter,
    )


def add_config(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE``, for the commands that always read a configuration file."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="the configuration file (default: $SHARDBILL_CONFIG, else ./shardbill.toml)",
    )


def add_json(parser: argparse.ArgumentParser) -> None:
    """Add ``--json``: one JSON object on standard output instead of text."""
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object on stdout instead of text"
    )


def add_config_and_json(parser: argparse.ArgumentParser) -> None:
    """Add the last options of every command that works on a configured deployment.

    ``--config FILE`` (:func:`add_config`) then ``--json`` (:func:`add_json`),
    in that order, as ``--help`` lists them.
    """
    add_config(parser)
    add_json(parser)


def add_servers(parser: argparse.ArgumentParser, *, mysql_help: str) -> None:
    """Add ``--mysql URL ... | --config FILE``: servers instead of SQLite files (:func:`servers`).

    Args:
        parser: the command's parser (``demo``, ``bench``).
        mysql_help: the help of ``--mysql``: what the command does with the URLs.
    """
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--mysql", nargs="+", metavar="URL", help=mysql_help)
    where.add_argument(
        "--config",
        metavar="FILE",
        help="run on the shards of this configuration file instead of SQLite files",
    )


def add_format(parser: argparse.ArgumentParser) -> None:
    """Add ``--format jsonl|csv``: how events files are read (default: by extension)."""
    parser.add_argument("--format", choices=("jsonl", "csv"), help="default: by extension")


def positive(text: str) -> int:
    """The ``type`` of an option that takes an integer >= 1.

    Args:
        text: the option's value as given.

    Returns:
        The integer.

    Raises:
        argparse.ArgumentTypeError: not an integer, or less than 1.
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {value}")
    return value


def add_traffic(parser: argparse.ArgumentParser, *, events: int, seed: int) -> None:
    """Add ``--events``, ``--seed`` and ``--model``: the synthetic day to generate.

    Args:
        parser: the command's parser.
        events: the default of ``--events``.
        seed: the default of ``--seed``.
    """
    parser.add_argument(
        "--events", type=positive, default=events, help="distinct events to generate"
    )
    parser.add_argument("--seed", type=int, default=seed, help="seed of the synthetic traffic")
    parser.add_argument(
        "--model", choices=MODELS, default="skewed", help="traffic model of the synthetic day"
    )


# --------------------------------------------------------------------------- running


def print_json(value: object) -> None:
    """Print ``value`` as one JSON object on standard output (the ``--json`` output)."""
    print(json.dumps(value, ensure_ascii=False))


def progress_bars(args: argparse.Namespace) -> bool | None:
    """Whether to draw progress bars: never with ``--json``, else when a person is watching."""
    return False if args.json else None


def say(args: argparse.Namespace) -> Callable[[str], None]:
    """Where a command's running commentary goes: standard error with ``--json``, else stdout.

    Args:
        args: the parsed command line (``--json`` decides).

    Returns:
        A function that prints one line and flushes.
    """
    stream = sys.stderr if args.json else sys.stdout

    def print_line(line: str) -> None:
        print(line, file=stream, flush=True)

    return print_line


def load_config(args: argparse.Namespace) -> Config:
    """The configuration of ``--config``, else ``$SHARDBILL_CONFIG``, else ``./shardbill.toml``."""
    from shardbill.config import Config, find_config

    return Config.load(find_config(args.config))


def parse_urls(texts: Sequence[str], prefix: str) -> dict[str, ConnectionURL]:
    """The ``--mysql URL ...`` of ``demo`` and ``bench``, named ``<prefix>0``, ``<prefix>1``, ...

    Args:
        texts: the URLs as given.
        prefix: the shard names' prefix.

    Returns:
        Shard name -> URL, in the order given.

    Raises:
        ConfigurationError: a URL that does not parse, naming its position.
    """
    from shardbill.providers.url import ConnectionURL

    urls = {}
    for index, text in enumerate(texts):
        try:
            urls[f"{prefix}{index}"] = ConnectionURL.parse(text)
        except ConfigurationError as exc:
            raise ConfigurationError(f"--mysql URL number {index + 1}: {exc}") from None
    return urls


def servers(
    args: argparse.Namespace, prefix: str
) -> tuple[dict[str, ConnectionURL] | None, Config | None]:
    """The servers of :func:`add_servers`' options, if any.

    Args:
        args: the parsed command line.
        prefix: the shard names' prefix for ``--mysql`` URLs (:func:`parse_urls`).

    Returns:
        ``(urls, None)`` for ``--mysql``; ``(the configuration's shards, the
        configuration)`` for ``--config``; ``(None, None)`` for SQLite files.
    """
    if args.mysql:
        return parse_urls(args.mysql, prefix), None
    if args.config:
        config = load_config(args)
        return dict(config.shards), config
    return None, None


def live_map(config: Config, store: MapStore) -> ShardMap:
    """The map the store holds, every shard of it with a URL."""
    from shardbill.errors import MapNotPublishedError

    try:
        current = store.load()
    except MapNotPublishedError as exc:
        raise ConfigurationError(
            f"{exc} (for a new deployment: shardbill init --config {config.source})"
        ) from None
    require_urls(config, current.shards)
    return current


def require_urls(config: Config, shards: Iterable[str]) -> None:
    """Raise :class:`~shardbill.errors.ConfigurationError` unless ``[shards]`` names each shard."""
    missing = sorted(set(shards) - set(config.shards))
    if missing:
        raise ConfigurationError(
            f"{config.source}: the shard map names shard(s) {missing} that [shards] has no URL "
            "for; add them to [shards]"
        )


def table(rows: Sequence[Sequence[str]]) -> str:
    """Plain-text columns: the first left-aligned, the others right-aligned.

    Args:
        rows: the header row, then the data rows, all of the same length.

    Returns:
        The lines, joined (no trailing newline).
    """
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def refuse_present_shard(current: ShardMap, flag: str, name: str) -> None:
    """Raise :class:`ConfigurationError` when ``--add NAME`` names a shard already in the map.

    The map's own error speaks of its API (``reweight()``); on the command line
    the fix is the ``--reweight`` option, so name that.
    """
    if name in current.shards:
        raise ConfigurationError(
            f"{flag} {name}: shard {name!r} is already in the map (weight "
            f"{current.shards[name]}); to change its weight use --reweight {name}=WEIGHT"
        )
