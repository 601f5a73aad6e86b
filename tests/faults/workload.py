"""Seeded, priced traffic for the fault scenarios (events -> charges, grouped by event).

Events come from :class:`shardbill.workloads.synthetic.Traffic` (the skewed model by
default: a few hot accounts carry most events, so batches collide on the same
rows) priced by the example rule set (:func:`shardbill.rules.comms.engine`).
A seeded fraction is moved to the price book's reseller account, whose
charges the rules split 70/30 over two accounts: those events touch two
slots (often two shards), so a fault can leave them applied on one shard and
not yet on the other.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence

import attrs

from shardbill.rules import Charge, UsageEvent, comms
from shardbill.workloads.synthetic import Traffic

__all__ = ["RESELLER", "Events", "batches", "charges_of", "priced_events"]

RESELLER = 900100
"""The price book's reseller: its charges are split over two accounts."""

Events = dict[str, tuple[Charge, ...]]
"""Event id -> its charges, in generation order."""


def priced_events(
    seed: int,
    count: int,
    *,
    model: str = "skewed",
    accounts: int = 200,
    split_fraction: float = 0.15,
    prefix: str = "fx",
) -> Events:
    """``count`` distinct priced events (ids ``{prefix}{seed}-{n}``), seeded."""
    rng = random.Random(seed)
    traffic = Traffic(model=model, events=count, seed=seed, accounts=accounts, id_prefix=prefix)
    events: list[UsageEvent] = []
    for event in traffic.distinct():
        split = rng.random() < split_fraction
        events.append(attrs.evolve(event, account=RESELLER) if split else event)
    pricing = comms.engine().price_batch(events)
    if pricing.rejected:
        raise AssertionError(f"the workload must price cleanly: {pricing.rejected[:3]}")
    out: dict[str, list[Charge]] = {}
    for charge in pricing.charges:
        out.setdefault(charge.event_id, []).append(charge)
    return {event_id: tuple(charges) for event_id, charges in out.items()}


def charges_of(events: Mapping[str, Sequence[Charge]], ids: Sequence[str]) -> list[Charge]:
    """The charges of ``ids``, event by event (all charges of an event stay together)."""
    return [charge for event_id in ids for charge in events[event_id]]


def batches(ids: Sequence[str], size: int, rng: random.Random | None = None) -> Iterator[list[str]]:
    """``ids`` cut into batches of ``size`` (shuffled first when ``rng`` is given)."""
    order = list(ids)
    if rng is not None:
        rng.shuffle(order)
    for start in range(0, len(order), size):
        yield order[start : start + size]
