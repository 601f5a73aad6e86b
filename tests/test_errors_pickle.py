"""Every error shardbill defines survives a pickle round trip (so it can cross a process pool).

The classes are found by walking the package, so a new error class is covered
without editing this file. Each is built from its own signature with sample
values for its keyword-only parameters; after the round trip its type, message,
``args`` and attributes must be the same.
"""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil
from collections.abc import Iterator
from typing import Any

import pytest

import shardbill
from shardbill.errors import FencedError
from shardbill.ingest import IngestSummary
from shardbill.writer.results import EventState, WriteResult

SAMPLES: dict[str, Any] = {
    "errno": 1213,
    "shard": "s1",
    "slots": (3, 4),
    "epoch": 7,
    "moved": {3: "s2"},
    "position": 2,
    "rule": "comms.sms",
    "store": "file:map.json",
    "stored_epoch": 5,
    "expected_epoch": 4,
    "new_epoch": 6,
    "owner": "host-1/123",
    "source_epoch": 4,
    "target_epoch": 5,
    "expires_at": 1_800_000_000.5,
    "key": "writer.batch_size",
    "summary": IngestSummary(
        path="events.jsonl", rejects_path="events.rejects.jsonl", applied=3, interrupted=True
    ),
}


def _error_classes() -> Iterator[type[BaseException]]:
    seen: set[type[BaseException]] = set()
    for info in pkgutil.walk_packages(shardbill.__path__, "shardbill."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__.startswith("shardbill")
                and value not in seen
            ):
                seen.add(value)
                yield value


def _instance(cls: type[BaseException]) -> BaseException:
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.kind is p.KEYWORD_ONLY:
            kwargs[p.name] = SAMPLES.get(p.name, f"sample {p.name}")
        else:
            args.append(SAMPLES.get(p.name, f"sample {p.name}"))
    if not args and not kwargs:
        args = ["sample message"]
    return cls(*args, **kwargs)


CLASSES = sorted(_error_classes(), key=lambda c: f"{c.__module__}.{c.__qualname__}")


def test_the_walk_finds_the_errors() -> None:
    names = {c.__name__ for c in CLASSES}
    assert {"FencedError", "ReshardClaimedError", "EpochConflictError", "RuleError"} <= names


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__qualname__)
def test_round_trip(cls: type[BaseException]) -> None:
    error = _instance(cls)
    error.__cause__ = ValueError("the cause")
    back = pickle.loads(pickle.dumps(error))  # noqa: S301 (our own bytes)
    assert type(back) is cls
    assert str(back) == str(error)
    assert back.args == error.args
    assert vars(back) == vars(error)


def test_an_error_inside_a_result_crosses_a_pickle() -> None:
    error = FencedError("moved", shard="s1", slots=(1,), epoch=3, moved={1: "s2"})
    result = WriteResult(events={"e1": EventState.FAILED}, failures={"e1": error})
    copy = pickle.loads(pickle.dumps(result))  # noqa: S301 (our own bytes)
    assert copy.events == result.events
    assert copy.retry == result.retry == {"e1"}
    back = copy.failures["e1"]
    assert type(back) is FencedError
    assert (back.shard, back.slots, back.epoch, dict(back.moved)) == ("s1", (1,), 3, {1: "s2"})
