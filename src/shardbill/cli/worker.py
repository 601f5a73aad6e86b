"""``shardbill worker``: consume usage events from Kafka (or a directory) and write them once.

Runs one :class:`~shardbill.worker.Worker` in a consumer group
(``--group``) on ``--topic`` (repeatable), with the configuration file's
shards, tables and rules, like ``ingest``. Records that cannot be applied go
to a dead-letter topic (default ``TOPIC.dead-letters``) or, with
``--dead-letters PATH``, to a JSON Lines file. With ``--source dir:PATH``
(or ``[worker] source = "dir:PATH"``) the records come from the ``*.jsonl``
files of a directory instead (:class:`~shardbill.worker.files.DirectorySource`:
no broker; pairs with SQLite shards): each file is a partition, its offsets
are kept in ``PATH/.shardbill-offsets.json``, and dead letters go to a file
(default ``PATH.dead-letters.jsonl``, beside the directory). SIGTERM or Ctrl-C stops
fetching, finishes the pending batch (at most ``--drain-timeout`` seconds),
commits and exits 0 with a summary; a second signal exits at once (safe:
nothing uncommitted is lost, it is delivered again). ``--json`` prints the
summary as one JSON object on standard output and progress lines (every
``--progress`` seconds) as JSON on standard error.

Exit codes: 0 stopped cleanly; 3 stopped with records not done (a shard
stayed down while draining: they are delivered again), or no Kafka broker
answered within ``--connect-timeout`` seconds at the start (nothing was
read); 2 a usage or configuration error (or the ``kafka`` extra missing).
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from shardbill.cli._common import add_config_and_json, command, live_map, load_config, positive
from shardbill.errors import ConfigurationError

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from types import FrameType

    from shardbill.cli._common import Subparsers
    from shardbill.config import Config
    from shardbill.observe import Observer
    from shardbill.worker import DeadLetterSink, Source, Worker, WorkerSettings, WorkerSummary

__all__ = ["add_parser", "run"]

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
"""The brokers when neither the option, the environment nor the file names any."""
DIRECTORY_PATTERN = "*.jsonl"
"""The files of a ``dir:`` source that are read."""
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


def _address(text: str) -> tuple[str, int]:
    import argparse

    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(
            f"--http takes ADDRESS:PORT (like 127.0.0.1:9108), got {text!r}"
        )
    return host, int(port)


def _source(text: str) -> str | Path:
    import argparse

    if text == "kafka":
        return text
    if text.startswith("dir:") and text[4:]:
        return Path(text[4:]).resolve()
    raise argparse.ArgumentTypeError(
        f"--source takes kafka or dir:PATH (a directory of .jsonl files), got {text!r}"
    )


def _from_env(where: str, value: str) -> str:
    """``value``, or the environment variable it names as ``env:NAME``."""
    if not value.startswith("env:"):
        return value
    name = value[4:]
    if name not in os.environ:
        raise ConfigurationError(f"{where}=env:{name}: the environment variable {name} is not set")
    return os.environ[name]


def _option(text: str) -> tuple[str, str]:
    import argparse

    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        # Only the key part is shown: the value may be a secret.
        raise argparse.ArgumentTypeError(
            f"--kafka-option takes KEY=VALUE (a librdkafka setting), got {key!r} with no '='"
        )
    try:  # secrets from the environment, not the process list
        return key, _from_env(f"--kafka-option {key}", value)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(sub: Subparsers) -> None:
    """Register ``worker`` on the main parser's subcommands."""
    worker = command(
        sub,
        "worker",
        "consume usage events from Kafka (or a directory) and write them exactly once",
        "Join the consumer group GROUP on the topics, price the events with the configured "
        "rules and write them in batches (by --batch-size and --linger-ms) exactly once; "
        "commit each partition's offset only after every event before it is done. Records that "
        "cannot be applied go to the dead letters with their reason. Run more workers with the "
        "same --group to scale out (up to one per partition). SIGTERM or Ctrl-C: finish the "
        "batch, commit, exit 0; a second signal exits at once (what is not committed is "
        "delivered again and the ledger skips what was applied). With --source dir:PATH the "
        "records are the lines of PATH's *.jsonl files instead (no broker): each file is a "
        "partition, the offsets are kept in PATH/.shardbill-offsets.json.",
        "  shardbill worker --topic usage --group billing --bootstrap-servers kafka:9092\n"
        "  shardbill worker --source dir:events --exit-when-idle 5 --json\n"
        "  shardbill worker --topic usage --group billing --dead-letters dead.jsonl --json\n"
        "  shardbill worker --topic usage --group billing --kafka-option "
        "security.protocol=SSL --config prod.toml",
    )
    worker.add_argument(
        "--source",
        type=_source,
        metavar="kafka|dir:PATH",
        help="where records come from: Kafka, or the *.jsonl files of the directory PATH "
        "(default [worker] source, else kafka)",
    )
    worker.add_argument(
        "--topic",
        action="append",
        metavar="NAME",
        help="a topic to consume (repeat for several; default [worker] topics)",
    )
    worker.add_argument(
        "--group", metavar="NAME", help="the consumer group id (default [worker] group)"
    )
    worker.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT[,...]",
        help="the Kafka brokers (default $SHARDBILL_KAFKA_BOOTSTRAP, else [worker] "
        f"bootstrap_servers, else {DEFAULT_BOOTSTRAP})",
    )
    dead = worker.add_mutually_exclusive_group()
    dead.add_argument(
        "--dead-letter-topic",
        metavar="NAME",
        help="default: [worker] dead_letter_topic or dead_letters, else the first topic + "
        "'.dead-letters'",
    )
    dead.add_argument(
        "--dead-letters",
        metavar="PATH",
        help="append dead letters to this JSON Lines file (with --source dir:DIR the default "
        "is DIR.dead-letters.jsonl)",
    )
    worker.add_argument(
        "--batch-size",
        type=positive,
        metavar="N",
        help="records per batch (default [writer] batch_size)",
    )
    worker.add_argument(
        "--max-held",
        type=positive,
        metavar="N",
        help="the most records held in memory at once (fetched, or waiting for a failed "
        "shard); at least the batch size (default [worker] max_held, else twice the batch "
        "size)",
    )
    worker.add_argument(
        "--linger-ms",
        type=positive,
        metavar="MS",
        help="how long a batch's first record waits for the batch to fill (default "
        "[worker] linger_ms, else 200)",
    )
    worker.add_argument(
        "--drain-timeout",
        type=_seconds,
        metavar="SECONDS",
        help="on SIGTERM / Ctrl-C, seconds to finish the pending batch (default [worker] "
        "drain_timeout_seconds, else 30)",
    )
    worker.add_argument(
        "--connect-timeout",
        type=_seconds,
        metavar="SECONDS",
        help="at the start, how long to wait for a Kafka broker to answer before failing "
        "(exit 3; default [worker] connect_timeout_seconds, else 30)",
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
        "--metrics-port",
        type=positive,
        metavar="PORT",
        help="serve Prometheus metrics (the worker's and the writer's) on this port "
        "(needs the metrics extra)",
    )
    worker.add_argument(
        "--metrics-address",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="the address --metrics-port listens on (0.0.0.0 for every interface)",
    )
    worker.add_argument(
        "--http",
        type=_address,
        metavar="ADDRESS:PORT",
        help="serve /metrics (Prometheus, with the metrics extra) and /healthz (200 while the "
        "loop polls and no batch waits for a failed shard, else 503 with a JSON reason)",
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


@attrs.frozen(kw_only=True)
class _Plan:
    """What to run: the options, then the ``[worker]`` section, then the defaults."""

    directory: Path | None
    topics: list[str]
    group: str
    bootstrap: str
    options: dict[str, str]
    settings: WorkerSettings
    dead_file: str | None
    dead_topic: str | None
    connect_timeout: float = 30.0


_KAFKA_ONLY = (
    ("topic", "--topic"),
    ("group", "--group"),
    ("bootstrap_servers", "--bootstrap-servers"),
    ("dead_letter_topic", "--dead-letter-topic"),
    ("kafka_option", "--kafka-option"),
    ("connect_timeout", "--connect-timeout"),
)


def _settings(args: argparse.Namespace, config: Config) -> WorkerSettings:
    from shardbill.worker import WorkerSettings

    section = config.worker
    linger = args.linger_ms if args.linger_ms is not None else section.linger_ms
    drain = args.drain_timeout
    batch_size = args.batch_size or section.batch_size or config.writer.batch_size
    max_held = args.max_held if args.max_held is not None else section.max_held
    if max_held is not None and max_held < batch_size:
        given, fix = (
            (f"--max-held {max_held}", "--max-held")
            if args.max_held is not None
            else (f"[worker] max_held = {max_held} (in {config.source})", "max_held =")
        )
        raise ConfigurationError(
            f"{given}: below the batch size ({batch_size}), a batch could never fill; give "
            f"{fix} {batch_size} or more (default {2 * batch_size})"
        )
    return WorkerSettings(
        batch_size=batch_size,
        max_held=max_held,
        linger=linger / 1000,
        drain_timeout=drain if drain is not None else section.drain_timeout_seconds,
        exit_when_idle=args.exit_when_idle,
    )


def _directory_plan(args: argparse.Namespace, config: Config, directory: Path) -> _Plan:
    """``--source dir:PATH``: Kafka options are refused; dead letters go to a file."""
    given = [flag for name, flag in _KAFKA_ONLY if getattr(args, name) is not None]
    if given:
        raise ConfigurationError(
            f"{', '.join(given)}: a Kafka option, but the source is the directory "
            f"{str(directory)!r}; drop it, or use --source kafka"
        )
    if not directory.is_dir():
        raise ConfigurationError(
            f"source dir:{directory}: no such directory; create it and put the .jsonl event "
            "files in it (or give another --source dir:PATH)"
        )
    dead = Path(
        args.dead_letters
        or config.worker.dead_letters
        or directory.with_name(directory.name + ".dead-letters.jsonl")
    ).resolve()
    if dead.parent == directory and fnmatch(dead.name, DIRECTORY_PATTERN):
        raise ConfigurationError(
            f"dead letters {str(dead)!r}: inside the source directory, where they would be "
            "read again as events; write them outside it (--dead-letters PATH)"
        )
    return _Plan(
        directory=directory,
        topics=[],
        group="",
        bootstrap="",
        options={},
        settings=_settings(args, config),
        dead_file=str(dead),
        dead_topic=None,
    )


def _plan(args: argparse.Namespace, config: Config) -> _Plan:
    section = config.worker
    chosen = args.source if args.source is not None else section.source
    if isinstance(chosen, Path):
        return _directory_plan(args, config, chosen)
    topics: list[str] = args.topic or list(section.topics)
    group: str | None = args.group or section.group
    if not topics:
        raise ConfigurationError(
            "no topic to consume: give --topic NAME, or topics = [...] under [worker] in "
            f"{config.source} (or, with no broker, --source dir:PATH for a directory of .jsonl "
            "files)"
        )
    if not group:
        raise ConfigurationError(
            "no consumer group: give --group NAME, or group = ... under [worker] in "
            f"{config.source}"
        )
    options = {
        **{key: _from_env(f"[worker.kafka] {key}", v) for key, v in section.kafka.items()},
        **dict(args.kafka_option or ()),
    }
    settings = _settings(args, config)
    dead_file = args.dead_letters or (section.dead_letters if not args.dead_letter_topic else None)
    dead_topic = None
    if not dead_file:
        dead_topic = (
            args.dead_letter_topic or section.dead_letter_topic or f"{topics[0]}.dead-letters"
        )
        if dead_topic in topics:
            raise ConfigurationError(
                f"--dead-letter-topic {dead_topic!r} is also a --topic; dead letters would be "
                "read again: name another topic"
            )
    return _Plan(
        directory=None,
        topics=topics,
        group=group,
        bootstrap=(
            args.bootstrap_servers
            or os.environ.get("SHARDBILL_KAFKA_BOOTSTRAP")
            or section.bootstrap_servers
            or DEFAULT_BOOTSTRAP
        ),
        options=options,
        settings=settings,
        dead_file=str(dead_file) if dead_file else None,
        dead_topic=dead_topic,
        connect_timeout=(
            args.connect_timeout
            if args.connect_timeout is not None
            else section.connect_timeout_seconds
        ),
    )


def _metrics(
    args: argparse.Namespace,
) -> tuple[Observer | None, Callable[[WorkerSummary], None] | None]:
    """With ``--metrics-port``: the writer's observer and the worker's hook, and the server.

    With ``--http`` alone: the observer and the hook when ``prometheus-client`` is
    installed (``/metrics`` serves them), else none (``/metrics`` answers 404).
    """
    from shardbill.errors import DriverNotInstalledError
    from shardbill.metrics import PrometheusObserver
    from shardbill.worker.prometheus import WorkerMetrics

    if args.metrics_port is None:
        if args.http is None:
            return None, None
        try:
            return PrometheusObserver(), WorkerMetrics()
        except DriverNotInstalledError:
            return None, None

    observer, metrics = PrometheusObserver(), WorkerMetrics()  # both say which extra is missing
    import prometheus_client

    try:
        prometheus_client.start_http_server(args.metrics_port, addr=args.metrics_address)
    except OSError as exc:
        raise ConfigurationError(
            f"--metrics-port {args.metrics_port} on {args.metrics_address}: {exc.strerror or exc}"
        ) from None
    return observer, metrics


def _report(args: argparse.Namespace, plan: _Plan, summary: WorkerSummary) -> int:
    code = EXIT_UNFINISHED if summary.uncommitted else 0
    if args.json:
        out = summary.to_dict()
        if plan.directory is not None:
            out["source"] = f"dir:{plan.directory}"
        else:
            out["source"] = "kafka"
            out["group"] = plan.group
            out["topics"] = plan.topics
        out["exit_code"] = code
        print(json.dumps(out))
    else:
        print(f"stopped after {summary.seconds:.1f} s: {_line(summary)}")
        if summary.uncommitted:
            print(
                f"  {summary.uncommitted:,} records not done (a shard stayed down): not "
                "committed, they are delivered again"
            )
    return code


def _source_and_sink(plan: _Plan) -> tuple[Source, DeadLetterSink, Callable[[], None]]:
    """The plan's source, its dead-letter sink and what closes the sink.

    Kafka's classes are imported only when used (they need the ``kafka`` extra).
    """
    from shardbill.worker import DirectorySource, JsonlDeadLetters

    sink: DeadLetterSink
    if plan.directory is not None:
        assert plan.dead_file is not None  # noqa: S101 - a directory's dead letters are a file
        source = DirectorySource(plan.directory, pattern=DIRECTORY_PATTERN)
        return source, JsonlDeadLetters(plan.dead_file), lambda: None

    from shardbill.worker.kafka import KafkaDeadLetters, KafkaSource

    close: Callable[[], None] = lambda: None  # noqa: E731 - a file needs no closing
    if plan.dead_file:
        sink = JsonlDeadLetters(plan.dead_file)
    else:
        assert plan.dead_topic is not None  # noqa: S101 - _plan gives one of the two
        producer = KafkaDeadLetters(
            bootstrap_servers=plan.bootstrap, topic=plan.dead_topic, options=plan.options
        )
        sink, close = producer, producer.close  # close flushes what is in flight
    kafka = KafkaSource(
        bootstrap_servers=plan.bootstrap,
        topics=plan.topics,
        group=plan.group,
        options=plan.options,
        connect_timeout=plan.connect_timeout,
    )
    return kafka, sink, close


def run(args: argparse.Namespace) -> int:
    """Run ``worker``; returns the exit code."""
    from shardbill.pipeline import Pipeline
    from shardbill.worker import Worker, json_decoder
    from shardbill.writer import AggregationWriter

    config = load_config(args)
    plan = _plan(args, config)
    engine = config.engine()
    source, sink, close_sink = _source_and_sink(plan)
    last = [time.monotonic()]
    observer, metrics = _metrics(args)

    def progress(summary: WorkerSummary) -> None:
        if metrics is not None:
            metrics(summary)
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
            observer=observer,
        ) as writer:
            worker = Worker(
                source=source,
                processor=Pipeline(engine=engine, writer=writer),
                dead_letters=sink,
                decoder=json_decoder(account_as_int=config.account_as_int),
                settings=plan.settings,
                on_batch=progress,
            )
            saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
            _install_signals(worker)
            http = None
            if args.http is not None:
                from shardbill.worker.http import WorkerHttp, worker_health

                host, port = args.http
                http = WorkerHttp(address=host, port=port, health=worker_health(worker)).start()
            if not args.json:
                where = plan.dead_file or f"topic {plan.dead_topic}"
                reading = (
                    f"the {DIRECTORY_PATTERN} files of {plan.directory}"
                    if plan.directory is not None
                    else f"group {plan.group} on {', '.join(plan.topics)} at {plan.bootstrap}"
                )
                print(f"worker: {reading}; dead letters to {where}", flush=True)
            try:
                summary = worker.run()
            finally:
                for number, handler in saved.items():  # a caller's own, once the worker is done
                    signal.signal(number, handler)
                if http is not None:
                    http.close()
                close_sink()
    return _report(args, plan, summary)
