"""Synthetic usage traffic for tests, the demo and benchmarks (seeded, streaming).

Three traffic models, the ones the reference system used to find each
server's peak:

``uniform``
    every event comes from a different account (no two events share a row,
    so nothing coalesces: the worst case for batching).
``skewed``
    a small set of accounts produces most of the traffic: account ranks are
    drawn from a Zipf distribution over ``accounts`` accounts with exponent
    ``zipf_exponent`` (default 1.1: the top 1 % of 100,000 accounts send
    about three quarters of the events), like real messaging platforms where a few large
    customers dominate.
``hot``
    every event comes from one account (the hot-shard case: everything
    coalesces into a handful of rows on one shard).

Events are realistic for the example rule set (:mod:`shardbill.rules.comms`):
SMS to weighted destination countries with message lengths and encodings,
voice calls with durations and directions, email sends; a fraction of
accounts are subaccounts carrying a ``parent_account`` dimension.

Delivery can be made at-least-once and out of order: ``duplicate_fraction``
re-delivers that fraction of events a little later (same id, same content),
and ``reorder_window`` shuffles delivery within a sliding window. Generation
streams: memory stays bounded by the window and the batch, not by the number
of events (ten million events need no more memory than one batch).
"""

from __future__ import annotations

import bisect
import datetime as dt
import enum
import heapq
import itertools
import random
from collections.abc import Callable, Iterator

import attrs

from shardbill.rules import UsageEvent

__all__ = ["Traffic", "TrafficModel"]

_COUNTRIES = (
    ("US", 40), ("GB", 10), ("DE", 8), ("FR", 7), ("BR", 6), ("IN", 6), ("MX", 4),
    ("CA", 4), ("ES", 3), ("IT", 3), ("NL", 2), ("JP", 2), ("AU", 2), ("SG", 1),
    ("ZA", 1), ("PL", 1), ("SE", 1), ("NG", 1),
)  # fmt: skip
_COUNTRY_NAMES = tuple(c for c, _ in _COUNTRIES)
_COUNTRY_CUM = tuple(itertools.accumulate(w for _, w in _COUNTRIES))
_PRODUCTS = (("sms", 70), ("voice", 20), ("email", 10))
_PRODUCT_NAMES = tuple(p for p, _ in _PRODUCTS)
_PRODUCT_CUM = tuple(itertools.accumulate(w for _, w in _PRODUCTS))
_FIRST_ACCOUNT = 100_000


class TrafficModel(enum.StrEnum):
    """The shape of the account distribution."""

    UNIFORM = "uniform"
    SKEWED = "skewed"
    HOT = "hot"


def _fraction(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{attribute.name!r} must be in [0, 1): {value!r}")


@attrs.frozen(kw_only=True)
class Traffic:
    """A seeded stream of synthetic usage events.

    Args:
        model: uniform, skewed or hot (a :class:`TrafficModel` or its name).
        events: how many distinct events (re-deliveries come on top).
        seed: the seed; the same arguments give the same stream, always.
        accounts: the account population of the skewed model.
        zipf_exponent: the skewed model's exponent (> 0; larger is more skewed).
        start: the first event time (UTC); times grow through ``span``.
        span: the time the stream covers (default one day).
        duplicate_fraction: the fraction of events delivered twice.
        reorder_window: events shuffled within a sliding window of this many.
        subaccount_fraction: the fraction of accounts billed to a parent.
        id_prefix: event ids are ``{id_prefix}{seed}-{n}``.

    Example:
        >>> traffic = Traffic(model="skewed", events=3, seed=1)
        >>> [e.event_id for e in traffic]
        ['ev1-0', 'ev1-1', 'ev1-2']
    """

    model: TrafficModel = attrs.field(converter=TrafficModel)
    events: int = attrs.field(validator=attrs.validators.ge(0))
    seed: int = 0
    accounts: int = attrs.field(default=100_000, validator=attrs.validators.ge(1))
    zipf_exponent: float = attrs.field(default=1.1, validator=attrs.validators.gt(0))
    start: dt.datetime = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    span: dt.timedelta = dt.timedelta(days=1)
    duplicate_fraction: float = attrs.field(default=0.0, validator=_fraction)
    reorder_window: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    subaccount_fraction: float = attrs.field(default=0.05, validator=_fraction)
    id_prefix: str = "ev"

    def __iter__(self) -> Iterator[UsageEvent]:
        return self.deliveries()

    @property
    def end(self) -> dt.datetime:
        """When the stream's span ends: a writer consuming it should read this as 'now'.

        The stream's dates are fixed (so a seed always gives the same events);
        a writer whose clock is the wall clock would refuse them as too late
        once they are older than its dedup horizon. Give it
        ``clock=traffic.end.timestamp``.
        """
        return self.start + self.span

    def distinct(self) -> Iterator[UsageEvent]:
        """Every distinct event once, in generation order (what an oracle should count)."""
        rng = random.Random(self.seed)
        pick = self._account_picker(rng)
        step = self.span / max(self.events, 1)
        for n in range(self.events):
            yield self._event(rng, n, pick(n), self.start + step * n)

    def deliveries(self) -> Iterator[UsageEvent]:
        """The stream as delivered: with re-deliveries and reordering when configured."""
        stream: Iterator[UsageEvent] = self.distinct()
        if self.duplicate_fraction:
            stream = self._with_duplicates(stream)
        if self.reorder_window > 1:
            stream = self._reordered(stream)
        return stream

    def batches(self, size: int) -> Iterator[list[UsageEvent]]:
        """The delivered stream cut into lists of at most ``size`` events."""
        if size < 1:
            raise ValueError(f"'size' must be >= 1: {size}")
        it = self.deliveries()
        while batch := list(itertools.islice(it, size)):
            yield batch

    # ------------------------------------------------------------------ internals

    def _account_picker(self, rng: random.Random) -> Callable[[int], int]:
        if self.model is TrafficModel.UNIFORM:
            return lambda n: _FIRST_ACCOUNT + n
        if self.model is TrafficModel.HOT:
            return lambda n: _FIRST_ACCOUNT
        weights = itertools.accumulate(
            1.0 / (rank**self.zipf_exponent) for rank in range(1, self.accounts + 1)
        )
        cumulative = list(weights)
        total = cumulative[-1]
        # Ranks map to scattered account ids so hot accounts do not share a shard range.
        scatter = random.Random(self.seed ^ 0x5EED).sample(range(self.accounts), self.accounts)

        def pick(_n: int) -> int:
            rank = bisect.bisect_left(cumulative, rng.random() * total)
            return _FIRST_ACCOUNT + scatter[min(rank, self.accounts - 1)]

        return pick

    def _event(self, rng: random.Random, n: int, account: int, when: dt.datetime) -> UsageEvent:
        product = _PRODUCT_NAMES[bisect.bisect_left(_PRODUCT_CUM, rng.random() * _PRODUCT_CUM[-1])]
        country = _COUNTRY_NAMES[bisect.bisect_left(_COUNTRY_CUM, rng.random() * _COUNTRY_CUM[-1])]
        dimensions: dict[str, str | int] = {"country": country}
        if product == "sms":
            quantity = 1 if rng.random() < 0.9 else rng.randint(2, 20)
            dimensions["characters"] = rng.choice((40, 90, 140, 160, 200, 320, 480))
            dimensions["encoding"] = "gsm7" if rng.random() < 0.85 else "ucs2"
        elif product == "voice":
            quantity = max(1, int(rng.expovariate(1 / 150)))
            dimensions["direction"] = "outbound" if rng.random() < 0.7 else "inbound"
        else:
            quantity = rng.choice((1, 1, 1, 5, 50, 500))
        # A stable share of accounts are subaccounts of a parent account.
        if (account * 2654435761) % 10_000 < self.subaccount_fraction * 10_000:
            dimensions["parent_account"] = _FIRST_ACCOUNT // 10 + account % 97
        return UsageEvent(
            event_id=f"{self.id_prefix}{self.seed}-{n}",
            account=account,
            time=when,
            product=product,
            quantity=quantity,
            dimensions=dimensions,
        )

    def _with_duplicates(self, stream: Iterator[UsageEvent]) -> Iterator[UsageEvent]:
        rng = random.Random(self.seed ^ 0xD0D0)
        pending: list[tuple[int, int, UsageEvent]] = []  # heap of (due position, seq, event)
        position = 0
        for position, event in enumerate(stream, start=1):
            yield event
            if rng.random() < self.duplicate_fraction:
                heapq.heappush(pending, (position + rng.randint(1, 200), position, event))
            while pending and pending[0][0] <= position:
                yield heapq.heappop(pending)[2]
        while pending:
            yield heapq.heappop(pending)[2]

    def _reordered(self, stream: Iterator[UsageEvent]) -> Iterator[UsageEvent]:
        rng = random.Random(self.seed ^ 0x0DE7)
        window: list[UsageEvent] = []
        for event in stream:
            window.append(event)
            if len(window) >= self.reorder_window:
                yield window.pop(rng.randrange(len(window)))
        while window:
            yield window.pop(rng.randrange(len(window)))
