"""The ONE place where the simulation reads a write's result.

The writer reports one :class:`~shardbill.writer.EventState` per event
(``WriteResult.events``); the pipeline adds its pricing rejections and
conflicting repeats. Everything else in the simulation sees only
:func:`outcomes`: event id -> :class:`Outcome`. Adapting the simulation to
a new result type means changing this function, nothing else.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from shardbill import PipelineResult, WriteResult


class Outcome(enum.Enum):
    """What a call reported for one event."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    REJECTED = "rejected"
    FAILED = "failed"


class ResultError(AssertionError):
    """The result itself is malformed: an event in no state, or in two."""


def outcomes(
    result: WriteResult | PipelineResult, sent: Iterable[str], *, strict_ok: bool = False
) -> dict[str, Outcome]:
    """Each sent event's reported state; raises ResultError when the result is malformed.

    Args:
        result: what ``AggregationWriter.write`` or ``Pipeline.process`` returned.
        sent: the event ids of the call.
        strict_ok: also require ``ok`` to be False when any event is not
            applied or duplicate (issue 13 item 7: today ``ok`` stays True
            with conflicts).
    """
    write = result.write if isinstance(result, PipelineResult) else result
    states: dict[str, list[Outcome]] = {}

    def put(ids: Iterable[str], outcome: Outcome) -> None:
        for event_id in ids:
            states.setdefault(event_id, []).append(outcome)

    if isinstance(result, PipelineResult):
        put({r.event_id for r in result.pricing_rejected}, Outcome.REJECTED)
        put(result.conflicting_repeats, Outcome.REJECTED)
    for event_id, state in write.events.items():  # one state per event (issue 13)
        put([event_id], Outcome(state.value))
    wanted = set(sent)
    problems = [
        f"{event_id}: reported as {', '.join(o.value for o in found)}"
        for event_id, found in sorted(states.items())
        if len(found) > 1
    ]
    problems += [f"{e}: reported in no state" for e in sorted(wanted - set(states))]
    problems += [f"{e}: reported but not sent" for e in sorted(set(states) - wanted)]
    if strict_ok:
        bad = sorted(e for e, found in states.items() if found[0] in _NOT_DONE)
        if bad and result.ok:
            problems.append(f"ok is True although {bad[:5]} conflict or failed")
    if problems:
        raise ResultError("malformed result: " + "; ".join(problems))
    return {event_id: found[0] for event_id, found in states.items()}


_NOT_DONE = frozenset({Outcome.CONFLICT, Outcome.FAILED})
