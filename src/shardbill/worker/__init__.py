"""The stream worker: consume usage events, write them exactly once, commit offsets after.

A :class:`Worker` runs one member of a consumer group: it polls records from
a :class:`Source` (Kafka: :class:`~shardbill.worker.kafka.KafkaSource`, with
the ``shardbill[kafka]`` extra), decodes them (:func:`json_decoder`), prices
and writes them in batches with a :class:`~shardbill.pipeline.Pipeline`, sends
records that cannot be applied to a :class:`DeadLetterSink` (a Kafka topic,
:class:`~shardbill.worker.kafka.KafkaDeadLetters`, or a file,
:class:`JsonlDeadLetters`) and commits each partition's offset only once
every record below it is done. See :mod:`shardbill.worker.loop` for the
protocol and ``docs/howto/run-workers.md`` for running a fleet.

Modules: :mod:`~shardbill.worker.loop` (the worker),
:mod:`~shardbill.worker.offsets` (what may be committed, pure),
:mod:`~shardbill.worker.records` (records and dead letters, pure),
:mod:`~shardbill.worker.protocols` (the interfaces),
:mod:`~shardbill.worker.decoding`, :mod:`~shardbill.worker.sinks`,
:mod:`~shardbill.worker.files` (a directory of JSON Lines files, no broker),
:mod:`~shardbill.worker.eventfile` (one events file or standard input, read
as ``ingest`` reads it),
:mod:`~shardbill.worker.http` (``/metrics`` and ``/healthz``),
:mod:`~shardbill.worker.memory` (in-memory broker for tests) and
:mod:`~shardbill.worker.kafka` (confluent-kafka; imported only when used).

Level: above the writer, the pipeline and the operator's tools' level, below
the configuration and the command line (``tests/test_layers.py``).
"""

from shardbill.worker.decoding import json_decoder
from shardbill.worker.eventfile import FileSource
from shardbill.worker.files import DirectorySource
from shardbill.worker.loop import Worker, WorkerSettings, WorkerSummary
from shardbill.worker.memory import MemoryBroker, MemoryDeadLetters, MemorySource
from shardbill.worker.offsets import OffsetTracker
from shardbill.worker.protocols import (
    DeadLetterSink,
    Decoder,
    Finite,
    KnowsEnds,
    Processor,
    RebalanceListener,
    Source,
)
from shardbill.worker.records import DeadLetter, Partition, PartitionState, Record, Stage
from shardbill.worker.sinks import JsonlDeadLetters

__all__ = [
    "DeadLetter",
    "DeadLetterSink",
    "Decoder",
    "DirectorySource",
    "FileSource",
    "Finite",
    "JsonlDeadLetters",
    "KnowsEnds",
    "MemoryBroker",
    "MemoryDeadLetters",
    "MemorySource",
    "OffsetTracker",
    "Partition",
    "PartitionState",
    "Processor",
    "RebalanceListener",
    "Record",
    "Source",
    "Stage",
    "Worker",
    "WorkerSettings",
    "WorkerSummary",
    "json_decoder",
]
