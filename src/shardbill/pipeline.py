"""Events in, exactly-once aggregates out: a rules engine in front of a writer.

:meth:`Pipeline.process` takes one batch of usage events (as a stream
consumer delivers them, duplicates and replays included):

1. repeats of one event id inside the batch are folded: an identical repeat
   is a duplicate; a repeat with different content is rejected as a conflict
   (an id names one event, as an idempotency key does);
2. the rules engine prices the distinct events; an event whose rule fails is
   rejected alone, with the rule and the reason;
3. the writer applies every priced event's charges exactly once (the ledger
   skips what earlier batches applied) and says what each shard did.

Acknowledge :attr:`PipelineResult.done`; process :attr:`PipelineResult.retry`
again (shards that failed transiently past the retry budget): re-processing
them is safe. Rejected and conflicting events need a fix, not a retry.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from shardbill.rules import RulesEngine, UsageEvent
from shardbill.rules.engine import PricingRejection
from shardbill.writer import AggregationWriter, WriteResult

__all__ = ["Pipeline", "PipelineResult"]


@attrs.frozen(kw_only=True)
class PipelineResult:
    """What one :meth:`Pipeline.process` call did.

    Attributes:
        events: events received, repeats included.
        repeats: repeats of an event id inside the batch with identical content.
        conflicting_repeats: ids repeated inside the batch with different content
            (all their copies are rejected).
        pricing_rejected: events the rules refused (rule, reason).
        write: the writer's result for the priced events.
    """

    events: int
    repeats: int
    conflicting_repeats: tuple[str, ...]
    pricing_rejected: tuple[PricingRejection, ...]
    write: WriteResult

    @property
    def ok(self) -> bool:
        """True when every event of the batch is done (applied or a duplicate)."""
        return not self.pricing_rejected and not self.conflicting_repeats and self.write.ok

    @property
    def done(self) -> frozenset[str]:
        """Event ids applied by this call or an earlier one (a consumer may acknowledge them)."""
        return self.write.done

    @property
    def retry(self) -> frozenset[str]:
        """Event ids to process again (their shard failed transiently)."""
        return self.write.retry

    @property
    def failed_events(self) -> frozenset[str]:
        """Event ids to process again (the same as :attr:`retry`)."""
        return self.write.failed_events

    @property
    def rejected_events(self) -> frozenset[str]:
        """Event ids refused for their content: by the rules, the writer, or as conflicts."""
        return frozenset(
            {r.event_id for r in self.pricing_rejected}
            | self.write.rejected_events
            | set(self.conflicting_repeats)
            | self.write.conflict_events
        )


class Pipeline:
    """Prices events with a rules engine and writes their charges with a writer.

    Args:
        engine: the rules engine.
        writer: the aggregation writer.

    Example:
        >>> pipeline = Pipeline(engine=comms.engine(), writer=writer)  # doctest: +SKIP
        >>> result = pipeline.process(events)  # doctest: +SKIP
        >>> result.ok, len(result.write.applied_events)  # doctest: +SKIP
        (True, 1980)
    """

    def __init__(self, *, engine: RulesEngine, writer: AggregationWriter) -> None:
        self._engine = engine
        self._writer = writer

    @property
    def writer(self) -> AggregationWriter:
        """The writer."""
        return self._writer

    @property
    def engine(self) -> RulesEngine:
        """The rules engine."""
        return self._engine

    def process(self, events: Iterable[UsageEvent]) -> PipelineResult:
        """Price and write one batch of events exactly once; see the module docstring."""
        first: dict[str, UsageEvent] = {}
        conflicting: set[str] = set()
        received = repeats = 0
        for event in events:
            received += 1
            seen = first.get(event.event_id)
            if seen is None:
                first[event.event_id] = event
            elif seen == event:
                repeats += 1
            else:
                conflicting.add(event.event_id)
        distinct = [e for i, e in first.items() if i not in conflicting]
        pricing = self._engine.price_batch(distinct)
        write = self._writer.write(pricing.charges)
        return PipelineResult(
            events=received,
            repeats=repeats,
            conflicting_repeats=tuple(sorted(conflicting)),
            pricing_rejected=pricing.rejected,
            write=write,
        )
