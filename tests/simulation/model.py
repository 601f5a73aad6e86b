"""The reference model: what the shards must hold, and what each delivery must report.

The model knows every event the simulation made up, and for each:

* ``acked``: the content a call reported as applied or duplicate (from then
  on it is applied exactly once, and nothing else under its id ever is);
* ``candidates``: contents sent whose outcome is unknown (a failed or
  killed call, an operation still in flight); at most one of them can have
  landed, and only until the event is acked;
* ``cancel``: a pipeline event's cancel (:class:`~shardbill.corrections.Corrector`),
  ``sent`` while it may or may not have landed, ``applied`` once a call said
  so. A cancel takes the event's sums back to zero (its rows stay, and a
  max stays what it was: a correction cannot take a max back).

An event's *content* is what one call carried under its id: its charges,
reduced to :class:`Part` s (exact repeats inside a call fold to one, as an
id names one event). From the model come the exact totals when nothing is
uncertain, and bounds (acked <= stored <= acked + candidates) when something
is: amounts and counts are never negative here, so the bounds are sums.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import attrs

from tests.simulation.results import Outcome

BIGINT_MAX = 2**63 - 1

#: Seconds in the dedup horizon (the writer's ``ledger_retention_days``, default 35).
HORIZON = 35 * 86_400


@attrs.frozen(order=True)
class Part:
    """One charge of an event, in integer units: what it adds to its rows."""

    account: int
    product: str
    amount: int  # units of 10**-6 (Amount(scale=6))
    quantity: int  # whole units (Quantity(scale=0))


Content = tuple[Part, ...]

#: table -> (key of a part, deltas of a part); measures in table order.
TABLE_MEASURES = {
    "sim_usage": ("amount", "quantity", "charges", "peak"),
    "sim_balance": ("amount", "charges"),
}
_SUMMED = {"sim_usage": (0, 1, 2), "sim_balance": (0, 1)}


def content_of(parts: Iterable[Part]) -> Content:
    """The content of a call's parts for one id: sorted, exact repeats folded."""
    return tuple(sorted(set(parts)))


def is_half(record: EventRecord, content: Content) -> bool:
    """Whether ``content`` is one half of a split event (a proper part of its whole)."""
    return record.split and set(content) < set(record.base)


def invalid(content: Content) -> bool:
    """True when the event must be rejected whatever the rows hold: a part's own value, or
    its parts summed per row (seed 2005: three charges of BIGINT_MAX on one account), does
    not fit a BIGINT. Such an event can never have landed, so its refusal settles it."""
    if any(not -BIGINT_MAX - 1 <= v <= BIGINT_MAX for p in content for v in (p.amount, p.quantity)):
        return True
    return any(
        not -BIGINT_MAX - 1 <= v <= BIGINT_MAX
        for rows in rows_of(content).values()
        for values in rows.values()
        for v in values
    )


def rows_of(content: Content) -> dict[str, dict[tuple[object, ...], list[int]]]:
    """The row deltas of a content, per table (coalesced within the content)."""
    out: dict[str, dict[tuple[object, ...], list[int]]] = {t: {} for t in TABLE_MEASURES}
    for part in content:
        usage = out["sim_usage"].setdefault((part.account, part.product), [0, 0, 0, part.amount])
        usage[0] += part.amount
        usage[1] += part.quantity
        usage[2] += 1
        usage[3] = max(usage[3], part.amount)
        balance = out["sim_balance"].setdefault((part.account,), [0, 0])
        balance[0] += part.amount
        balance[1] += 1
    return out


def cancelled(
    rows: dict[str, dict[tuple[object, ...], list[int]]],
) -> dict[str, dict[tuple[object, ...], list[int]]]:
    """The rows a cancelled content leaves: every sum back to zero, ``peak`` as it was."""
    return {
        table: {
            key: [v if table == "sim_usage" and i == 3 else 0 for i, v in enumerate(values)]
            for key, values in table_rows.items()
        }
        for table, table_rows in rows.items()
    }


def merge_rows(
    into: dict[str, dict[tuple[object, ...], list[int]]],
    rows: dict[str, dict[tuple[object, ...], list[int]]],
) -> None:
    """Add ``rows`` into ``into`` (sums, and max for ``peak``)."""
    for table, table_rows in rows.items():
        target = into.setdefault(table, {})
        for key, values in table_rows.items():
            current = target.get(key)
            if current is None:
                target[key] = list(values)
                continue
            for i in range(len(values)):
                if table == "sim_usage" and i == 3:
                    current[i] = max(current[i], values[i])
                else:
                    current[i] += values[i]


@attrs.define
class EventRecord:
    """What the model knows about one event id."""

    event_id: str
    time: float  # the event's own time (Unix seconds)
    base: Content  # the content it was made up with
    pipeline: bool = False
    account: int = 0  # pipeline events: the account of the usage event
    quantity: int = 0  # pipeline events: the usage quantity they were made with
    split: bool = False  # sent in two calls: its first part, then the rest
    acked: Content | None = None
    candidates: list[Content] = attrs.field(factory=list)
    first_sent: float | None = None  # writer clock at the first send (ledger applied_at)
    pruned: bool = False  # its ledger row may have been pruned
    applied_reported: bool = False  # a call reported it applied (only one ever may)
    cancel: str | None = None  # None, "sent" (unsure) or "applied"
    cancel_id: str | None = None  # the correction id of its cancel

    @property
    def settled(self) -> bool:
        """True when nothing about it is uncertain."""
        return not self.candidates


class Model:
    """Every event and what each delivery must report."""

    def __init__(self) -> None:
        self.events: dict[str, EventRecord] = {}

    def add(self, record: EventRecord) -> None:
        """A new event."""
        self.events[record.event_id] = record

    @property
    def uncertain(self) -> list[EventRecord]:
        """Events some of whose sent content may or may not have landed."""
        return [r for r in self.events.values() if r.candidates]

    # ------------------------------------------------------------------ totals

    def expected(self) -> dict[str, dict[tuple[object, ...], list[int]]]:
        """The exact rows the acked events make (valid when nothing is uncertain)."""
        out: dict[str, dict[tuple[object, ...], list[int]]] = {t: {} for t in TABLE_MEASURES}
        for record in self.events.values():
            if record.acked is not None:
                rows = rows_of(record.acked)
                merge_rows(out, cancelled(rows) if record.cancel == "applied" else rows)
        return out

    def account_bounds(self) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
        """Per account, ``[amount, charges]``: (acked, acked + the most any candidate adds)."""
        low: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        high: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        for record in self.events.values():
            # A cancel sent or applied may have taken the event back: it adds nothing for
            # sure, and at most what it added before (cancels only take away).
            if record.acked is not None:
                for (account,), values in rows_of(record.acked)["sim_balance"].items():
                    if record.cancel is not None:
                        high[account][0] += values[0]  # type: ignore[index]
                        high[account][1] += values[1]  # type: ignore[index]
                        low.setdefault(account, [0, 0])  # type: ignore[arg-type]
                        continue
                    for i in range(2):
                        low[account][i] += values[i]  # type: ignore[index]
                        high[account][i] += values[i]  # type: ignore[index]
            extra: dict[int, list[int]] = defaultdict(lambda: [0, 0])
            for candidate in record.candidates:
                for (account,), values in rows_of(candidate)["sim_balance"].items():
                    best = extra[account]  # type: ignore[index]
                    for i in range(2):
                        best[i] = max(best[i], values[i])
            for account, values in extra.items():
                for i in range(2):
                    high[account][i] += values[i]
        return dict(low), dict(high)

    def row_upper(self, table: str, key: tuple[object, ...]) -> list[int]:
        """The most a row's summed measures may hold (acked + every candidate that touches it)."""
        total = [0] * len(TABLE_MEASURES[table])
        for record in self.events.values():
            contents = ([record.acked] if record.acked is not None else []) + record.candidates
            best = [0] * len(total)
            for content in contents:
                values = rows_of(content)[table].get(key)
                if values is not None:
                    best = [max(b, v) for b, v in zip(best, values, strict=True)]
            total = [t + b for t, b in zip(total, best, strict=True)]
        return total

    def could_overflow(self, content: Content, *, beside: Sequence[Content] = ()) -> bool:
        """True when applying ``content`` could take a summed measure past BIGINT.

        ``beside``: the other contents of the same call, no longer candidates once
        the call ended but perhaps applied first in it (seed 8114: two events of one
        call whose sums overflow one row together, so the writer refuses one).
        """
        extra: dict[str, dict[tuple[object, ...], list[int]]] = {t: {} for t in TABLE_MEASURES}
        for other in beside:
            merge_rows(extra, rows_of(other))
        for table, table_rows in rows_of(content).items():
            for key, values in table_rows.items():
                upper = self.row_upper(table, key)
                more = extra[table].get(key)
                if more is not None:
                    upper = [u + m for u, m in zip(upper, more, strict=True)]
                if any(upper[i] + values[i] > BIGINT_MAX for i in _SUMMED[table]):
                    return True
        return False

    # ------------------------------------------------------------------ outcomes

    def allowed(
        self,
        record: EventRecord,
        content: Content,
        *,
        too_late: bool,
        overflow: bool,
        maybe_late: bool = False,
    ) -> set[Outcome]:
        """The outcomes a correct system may report for this delivery of ``record``.

        Exactly one call ever reports an event applied; the others report it
        duplicate (also one that finds the landed commit of a call that failed,
        or of a call still in flight), or conflict when their content differs.
        """
        if invalid(content):  # a charge out of range rejects its whole event, nothing else
            return {Outcome.REJECTED}
        if is_half(record, content):
            return {Outcome.REJECTED}  # half an event: incomplete, refused before any SQL
        applied = set() if record.applied_reported else {Outcome.APPLIED}
        if record.acked is not None:
            allowed = (
                applied | {Outcome.DUPLICATE} if content == record.acked else {Outcome.CONFLICT}
            )
        elif record.candidates:
            allowed = applied | (
                {Outcome.DUPLICATE} if content in record.candidates else {Outcome.CONFLICT}
            )
            if any(c != content for c in record.candidates):
                # Another uncertain content may be the one that landed (a changed or
                # other-account redelivery sent while the first was unsure: seed 60417).
                allowed.add(Outcome.CONFLICT)
        else:
            allowed = {Outcome.APPLIED}
        if too_late:  # refused as too late (a duplicate is harmless too)
            allowed = (allowed & {Outcome.DUPLICATE}) | {Outcome.REJECTED}
        elif maybe_late:  # a slot's dedup watermark may refuse it, or may not be raised yet
            allowed.add(Outcome.REJECTED)
        if overflow:  # an event that would overflow a row is refused alone
            allowed.add(Outcome.REJECTED)
        allowed.add(Outcome.FAILED)  # a transient failure past the retry budget: retry it
        return allowed

    def send(self, record: EventRecord, content: Content) -> None:
        """A call carrying ``content`` starts: until it ends, the content may land."""
        if is_half(record, content):
            return  # half an event is refused whole
        if record.acked is None and not invalid(content):
            record.candidates.append(content)

    def unsend(self, record: EventRecord, content: Content) -> None:
        """The call that carried ``content`` ended: its own entry goes (its report follows)."""
        if content in record.candidates:
            record.candidates.remove(content)

    def refuted(self, record: EventRecord, content: Content, *, in_flight: int) -> None:
        """A delivery of ``content`` was rejected, not for lateness: nothing of it is in.

        The writer reports an event rejected only when none of its money is
        in the ledger (a part in makes it failed, to be completed), and a
        crashed call lands nothing after it died. So the deliveries of
        ``content`` that ended unsure never landed: their entries go, but for
        one per call still carrying it (``in_flight``), which may land yet.
        """
        keep = in_flight
        kept: list[Content] = []
        for candidate in record.candidates:
            if candidate != content:
                kept.append(candidate)
            elif keep > 0:
                kept.append(candidate)
                keep -= 1
        record.candidates[:] = kept

    def record(self, record: EventRecord, content: Content, outcome: Outcome | None) -> None:
        """Take a reported outcome as the truth (``None``: the call died, outcome unknown)."""
        if outcome is Outcome.APPLIED:
            record.applied_reported = True
        if outcome in (Outcome.APPLIED, Outcome.DUPLICATE):
            if record.acked is None:
                record.acked = content
            record.candidates.clear()
        # A conflict proves only that another content's identity claim is in, not
        # that all of that content's money is (its other shards may have failed):
        # the candidates stay uncertain until their own calls say.
        elif (
            outcome in (Outcome.FAILED, None)
            and record.acked is None
            and not invalid(content)
            and not is_half(record, content)
        ):
            # one entry per uncertain delivery: a call still in flight with the same
            # content removes only its own entry when it ends
            record.candidates.append(content)
