"""``shardbill worker``: consume usage events from Kafka and write them exactly once.

Runs one :class:`~shardbill.worker.Worker` in a consumer group
(``--group``) on ``--topic`` (repeatable), with the configuration file's
shards, tables and rules, like ``ingest``. Records that cannot be applied go
to a dead-letter topic (default ``TOPIC.dead-letters``) or, with
``--dead-letters PATH``, to a JSON Lines file. SIGTERM or Ctrl-C stops
fetching, finishes the pending batch (at most ``--drain-timeout`` seconds),
commits and exits 0 with a summary; a second signal exits at once (safe:
nothing uncommitted is lost, it is delivered again). ``--json`` prints the
summary as one JSON object on standard output and progress lines (every
``--progress`` seconds) as JSON on standard error.

Exit codes: 0 stopped cleanly; 3 stopped with records not done (a shard
stayed down while draining: they are delivered again); 2 a usage or
configuration error (or the ``kafka`` extra missing).
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from typing import TYPE_CHECKING

from shardbill.cli_common import add_config_and_json, command, live_map, load_config, positive
from shardbill.errors import ConfigurationError

if TYPE_CHECKING:
    import argparse
    from types import FrameType

    from shardbill.cli_common import Subparsers
    from shardbill.worker import DeadLetterSink, Worker, WorkerSummary

__all__ = ["add_parser", "run"]

EXIT_UNFINISHED = 3
"""Stopped with records not done (delivered again to the next reader of their partitions)."""


def _seconds(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0: {text!r}")
    return value


def _option(text: str) -> tuple[str, str]:
    import argparse

    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        # Only the key part is shown: the value may be a secret.
        raise argparse.ArgumentTypeError(
            f"--kafka-option takes KEY=VALUE (a librdkafka setting), got {key!r} with no '='"
        )
    if value.startswith("env:"):  # secrets from the environment, not the process list
        name = value[4:]
        if name not in os.environ:
            raise argparse.ArgumentTypeError(
                f"--kafka-option {key}=env:{name}: the environment variable {name} is not set"
            )
        value = os.environ[name]
    return key, value


def add_parser(sub: Subparsers) -> None:
    """Register ``worker`` on the main parser's subcommands."""
    worker = command(
        sub,
        "worker",
        "consume usage events from Kafka and write them exactly once",
        "Join the consumer group GROUP on the topics, price the events with the configured "
        "rules and write them in batches (by --batch-size and --linger-ms) exactly once; "
        "commit each partition's offset only after every event before it is done. Records that "
        "cannot be applied go to the dead letters with their reason. Run more workers with the "
        "same --group to scale out (up to one per partition). SIGTERM or Ctrl-C: finish the "
        "batch, commit, exit 0; a second signal exits at once (what is not committed is "
        "delivered again and the ledger skips what was applied).",
        "  shardbill worker --topic usage --group billing --bootstrap-servers kafka:9092\n"
        "  shardbill worker --topic usage --group billing --dead-letters dead.jsonl --json\n"
        "  shardbill worker --topic usage --group billing --kafka-option "
        "security.protocol=SSL --config prod.toml",
    )
    worker.add_argument(
        "--topic",
        action="append",
        required=True,
        metavar="NAME",
        help="a topic to consume (repeat for several)",
    )
    worker.add_argument("--group", required=True, metavar="NAME", help="the consumer group id")
    worker.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT[,...]",
        default=os.environ.get("SHARDBILL_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        help="the Kafka brokers ($SHARDBILL_KAFKA_BOOTSTRAP)",
    )
    dead = worker.add_mutually_exclusive_group()
    dead.add_argument(
        "--dead-letter-topic", metavar="NAME", help="default: the first topic + '.dead-letters'"
    )
    dead.add_argument(
        "--dead-letters", metavar="PATH", help="append dead letters to this JSON Lines file"
    )
    worker.add_argument(
        "--batch-size",
        type=positive,
        metavar="N",
        help="records per batch (default [writer] batch_size)",
    )
    worker.add_argument(
        "--linger-ms",
        type=positive,
        metavar="MS",
        default=200,
        help="how long a batch's first record waits for the batch to fill",
    )
    worker.add_argument(
        "--drain-timeout",
        type=_seconds,
        metavar="SECONDS",
        default=30.0,
        help="on SIGTERM / Ctrl-C, seconds to finish the pending batch",
    )
    worker.add_argument(
        "--exit-when-idle",
        type=_seconds,
        metavar="SECONDS",
        help="stop after this long with nothing to read (default: run until stopped)",
    )
    worker.add_argument(
        "--progress",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="print a progress line (stderr) at most this often",
    )
    worker.add_argument(
        "--kafka-option",
        type=_option,
        action="append",
        metavar="KEY=VALUE",
        help="a librdkafka setting for the consumer and producer (repeatable); VALUE env:NAME "
        "reads the environment variable NAME (for secrets)",
    )
    add_config_and_json(worker)


def _install_signals(worker: Worker) -> None:
    def first(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        print(
            f"shardbill worker: {name}: finishing the batch and committing (again to exit now)",
            file=sys.stderr,
            flush=True,
        )
        worker.stop()
        # A second signal kills the process at once: safe, the uncommitted is redelivered.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    signal.signal(signal.SIGTERM, first)
    signal.signal(signal.SIGINT, first)


def _line(summary: WorkerSummary) -> str:
    return (
        f"{summary.records:,} records: {summary.applied:,} applied, "
        f"{summary.duplicates:,} duplicates, {summary.free:,} free, "
        f"{summary.dead_lettered:,} dead letters, {summary.retries:,} retries, "
        f"{summary.commits:,} commits"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``worker``; returns the exit code."""
    from shardbill.pipeline import Pipeline
    from shardbill.worker import JsonlDeadLetters, Worker, WorkerSettings, json_decoder
    from shardbill.worker.kafka import KafkaDeadLetters, KafkaSource
    from shardbill.writer import AggregationWriter

    options = dict(args.kafka_option or ())
    config = load_config(args)
    engine = config.engine()
    settings = WorkerSettings(
        batch_size=args.batch_size or config.writer.batch_size,
        linger=args.linger_ms / 1000,
        drain_timeout=args.drain_timeout,
        exit_when_idle=args.exit_when_idle,
    )
    sink: DeadLetterSink
    if args.dead_letters:
        sink = JsonlDeadLetters(args.dead_letters)
        where = args.dead_letters
    else:
        topic = args.dead_letter_topic or f"{args.topic[0]}.dead-letters"
        if topic in args.topic:
            raise ConfigurationError(
                f"--dead-letter-topic {topic!r} is also a --topic; dead letters would be read "
                "again: name another topic"
            )
        sink = KafkaDeadLetters(
            bootstrap_servers=args.bootstrap_servers, topic=topic, options=options
        )
        where = f"topic {topic}"
    source = KafkaSource(
        bootstrap_servers=args.bootstrap_servers,
        topics=args.topic,
        group=args.group,
        options=options,
    )
    last = [time.monotonic()]

    def progress(summary: WorkerSummary) -> None:
        now = time.monotonic()
        if now - last[0] < args.progress:
            return
        last[0] = now
        text = json.dumps(summary.to_dict()) if args.json else f"  {_line(summary)}"
        print(text, file=sys.stderr, flush=True)

    with config.open() as opened:
        live_map(config, opened.map_store)
        with AggregationWriter(
            shard_map=opened.map_store,
            provider=opened.provider,
            tables=config.tables,
            settings=config.writer.settings(),
        ) as writer:
            worker = Worker(
                source=source,
                processor=Pipeline(engine=engine, writer=writer),
                dead_letters=sink,
                decoder=json_decoder(account_as_int=config.account_as_int),
                settings=settings,
                on_batch=progress,
            )
            _install_signals(worker)
            if not args.json:
                print(
                    f"worker: group {args.group} on {', '.join(args.topic)} at "
                    f"{args.bootstrap_servers}; dead letters to {where}",
                    flush=True,
                )
            try:
                summary = worker.run()
            finally:
                if isinstance(sink, KafkaDeadLetters):
                    sink.close()
    if args.json:
        out = summary.to_dict()
        out["group"] = args.group
        out["topics"] = list(args.topic)
        out["exit_code"] = EXIT_UNFINISHED if summary.uncommitted else 0
        print(json.dumps(out))
    else:
        print(f"stopped after {summary.seconds:.1f} s: {_line(summary)}")
        if summary.uncommitted:
            print(
                f"  {summary.uncommitted:,} records not done (a shard stayed down): not "
                "committed, they are delivered again"
            )
    return EXIT_UNFINISHED if summary.uncommitted else 0
