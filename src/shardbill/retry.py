"""Retry policy: which failures are retried, and how long to wait between tries (pure).

The writer retries a shard's transaction from the start after a transient
failure: a deadlock, a lock-wait timeout, a lost connection (including a lost
COMMIT, whose outcome the next attempt reads from the ledger), a read-only
server during failover, a server that refuses connections, a killed query,
and a concurrent writer that claimed the same ledger row first. Anything
else (access denied, a missing table, a syntax error) fails at once: retrying
cannot fix it.

Waits grow exponentially with "full jitter" (a uniform draw between zero and
the cap), so many writers that failed together do not retry together. The
retries are bounded by *time* (``budget_seconds``, default 45 s, so a
30-second failover is ridden through) and by ``max_attempts``: a server that
stays down produces a reported failure, never a hot loop.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator

import attrs

from shardbill.errors import DuplicateKeyError, FencedError, RetryableError, ShardbillError

__all__ = ["RetryPolicy", "describe", "is_retryable"]


def is_retryable(exc: BaseException) -> bool:
    """True for failures that the same transaction may be tried again after.

    A duplicate key is retryable here because the only unique key the write
    path inserts is the ledger's: a duplicate means a concurrent writer
    claimed the same event first, and the retry will see it as done. A
    :class:`~shardbill.errors.FencedError` is retryable after a map reload.
    """
    return isinstance(exc, RetryableError | DuplicateKeyError | FencedError)


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """Bounded exponential backoff with full jitter.

    Args:
        max_attempts: tries in all, the first included (>= 1).
        base_delay: the cap of the first wait, in seconds.
        max_delay: the largest cap any wait may have, in seconds.
        budget_seconds: no wait starts that would end more than this many
            seconds after the first attempt began (the attempts' own time
            counts too); default 45 s, longer than a typical failover.
        seed: seed for the jitter, for reproducible runs (None: a fresh seed).
    """

    max_attempts: int = attrs.field(default=1000, validator=attrs.validators.ge(1))
    base_delay: float = attrs.field(default=0.005, validator=attrs.validators.ge(0))
    max_delay: float = attrs.field(default=2.0, validator=attrs.validators.ge(0))
    budget_seconds: float = attrs.field(default=45.0, validator=attrs.validators.ge(0))
    seed: int | None = None

    def delays(self, clock: Callable[[], float] = time.monotonic) -> Iterator[float]:
        """The waits before the 2nd, 3rd, ... attempts, within both bounds.

        The budget is measured with ``clock`` from this call (make it when the
        first attempt starts).
        """
        return self._waits(clock() + self.budget_seconds, clock)

    def _waits(self, deadline: float, clock: Callable[[], float]) -> Iterator[float]:
        rng = random.Random(self.seed)  # noqa: S311 - jitter, not a secret
        for attempt in range(self.max_attempts - 1):
            cap = min(self.max_delay, self.base_delay * (2 ** min(attempt, 60)))
            delay = rng.uniform(0, cap)
            if clock() + delay > deadline:
                return
            yield delay


def describe(exc: BaseException) -> str:
    """A one-line description of a failure for results and logs (never a password)."""
    name = type(exc).__name__
    if isinstance(exc, ShardbillError):
        return f"{name}: {exc}"
    return name
