"""The scheduler's side of the simulation: actors, their operations, step gates and faults.

Every actor (a writer, the pipeline, a reader, a resharder, the pruner)
runs its current operation in a thread of its own, but never two at once:
an operation runs only while the scheduler (the main thread) has released
it, and stops again at its next *step boundary*:

* the start of every outermost transaction it opens (each actor borrows
  connections through its own :class:`GatedProvider`, a
  :class:`~shardbill.providers.ConnectionProvider` around the shared one);
* every step a :class:`~shardbill.resharding.Resharder` announces through
  its ``before_step`` hook.

An actor stopped at a boundary holds no connection, so it blocks nobody.
Which operation advances next is the scheduler's choice, so the
interleaving is a function of the seed alone. At a boundary the scheduler
may also kill the operation (:class:`SimulatedCrash`: the actor's objects
are thrown away and built again), and arm a fault for the actor's next
transaction: its COMMIT cut before or after it reaches the server
(:class:`~shardbill.errors.CommitOutcomeUnknownError`), or the connection
lost in the middle of it.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator

from shardbill.errors import CommitOutcomeUnknownError, ConnectionLostError
from shardbill.providers import ConnectionProvider
from shardbill.providers.base import DBAPIConnection

#: The faults that can be armed for an actor's next transaction.
FAULTS = ("cut-before-commit", "cut-after-commit", "connection-lost")

#: The faults of a real server (backend "servers"): the shard's server is SIGKILLed and
#: restarted inside the actor's next transaction, after its connection is lent (so every
#: statement of it meets a dead connection) or after its last statement, before its
#: COMMIT (which then never reaches the server: InnoDB's recovery rolls it back).
SERVER_FAULTS = ("server-killed-in-transaction", "server-killed-before-commit")

#: How long the scheduler waits for an operation to reach its next boundary.
STEP_TIMEOUT = 60.0


class SimulatedCrash(Exception):  # noqa: N818 - named for what it simulates
    """The scheduler killed this operation at a step boundary (a process kill)."""


class HungError(AssertionError):
    """An operation did not reach a step boundary in time: a stall (itself a finding)."""


class Operation:
    """One call an actor makes (a write, a read, a reshard run), run in its own thread."""

    def __init__(self, actor: Actor, label: str, call: Callable[[], object]) -> None:
        self.actor = actor
        self.label = label
        self.steps = 0
        self.done = False
        self.value: object = None
        self.error: BaseException | None = None
        self.where = "start"
        self._call = call
        self._go = threading.Semaphore(0)
        self._parked = threading.Semaphore(0)
        self._crash = False
        self._thread = threading.Thread(target=self._body, name=f"sim-{label}", daemon=True)

    def _body(self) -> None:
        try:
            self.value = self._call()
        except BaseException as exc:
            self.error = exc
        finally:
            self.done = True
            self._parked.release()

    def start(self) -> None:
        """Run until the first boundary (or the end)."""
        self._thread.start()
        self._wait()

    def advance(self) -> None:
        """Run one more step: until the next boundary or the end."""
        if self.done:
            return
        self._go.release()
        self._wait()

    def crash(self) -> None:
        """Kill the operation at the boundary where it waits (and at any later one)."""
        if self.done:
            return
        self._crash = True
        self._go.release()
        self._thread.join(timeout=STEP_TIMEOUT)
        if self._thread.is_alive():
            raise HungError(f"{self.label} did not die within {STEP_TIMEOUT:.0f} s of its kill")

    def release_orphans(self) -> None:
        """After the call ended: wake any work it left parked in a pool, to die at once.

        A call that raised while its pool still held queued work can leave a
        worker parked at a boundary; closing the pool would wait for it forever.
        """
        self._crash = True
        for _ in range(8):
            self._go.release()

    def _wait(self) -> None:
        if not self._parked.acquire(timeout=STEP_TIMEOUT):
            raise HungError(
                f"{self.label} did not reach a step boundary within {STEP_TIMEOUT:.0f} s "
                f"(last boundary: {self.where})"
            )
        if self.done:
            self._thread.join(timeout=STEP_TIMEOUT)

    def gate(self, where: str) -> None:
        """Called in the operation's threads at a boundary: wait for the scheduler."""
        if self._crash:  # killed: work still queued in its threads dies at once too
            raise SimulatedCrash(f"{self.label} killed before {where}")
        self.steps += 1
        self.where = where
        self._parked.release()
        self._go.acquire()
        if self._crash:
            raise SimulatedCrash(f"{self.label} killed at {where}")


class Actor:
    """A named participant: its operation in flight and its faults to come."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.op: Operation | None = None
        self.faults: deque[str] = deque()
        self.depth = 0  # connections this actor holds now (one thread runs at a time)
        self.steps = 0  # boundaries passed, over the whole run

    @property
    def busy(self) -> bool:
        """True while an operation is in flight."""
        return self.op is not None and not self.op.done

    def gate(self, where: str) -> None:
        """A step boundary: park if an operation is running and no connection is held."""
        op = self.op
        if op is None or self.depth:
            return
        if threading.current_thread() is threading.main_thread():
            return  # set-up and checks run on the scheduler's thread, ungated
        if op.done:
            # Work an ended operation left queued in a pool (its call raised early):
            # orphaned, it must not run unscheduled.
            raise SimulatedCrash(f"{op.label} has ended; its leftover work stops at {where}")
        self.steps += 1
        op.gate(where)

    def begin(self, label: str, call: Callable[[], object]) -> Operation:
        """Start an operation and run it to its first boundary."""
        if self.busy:
            raise RuntimeError(f"{self.name} is busy with {self.op.label}")  # type: ignore[union-attr]
        self.op = Operation(self, label, call)
        self.op.start()
        return self.op


class GatedProvider:
    """One actor's view of the shared provider: step gates and armed faults.

    A fault is taken by the actor's next outermost read-write transaction
    (the lent connection itself is passed on unwrapped: the library asks it
    for its dialect).
    """

    def __init__(
        self,
        inner: ConnectionProvider,
        actor: Actor,
        *,
        restart: Callable[[str], None] | None = None,
    ) -> None:
        self._inner = inner
        self._actor = actor
        self._restart = restart  # kills and restarts a shard's server (SERVER_FAULTS)

    @property
    def restart(self) -> Callable[[str], None] | None:
        """What kills and restarts a shard's server (None: no server faults here)."""
        return self._restart

    @contextlib.contextmanager
    def connection(self, shard: str, *, readonly: bool = False) -> Iterator[DBAPIConnection]:
        actor = self._actor
        outermost = actor.depth == 0
        if outermost:
            actor.gate(f"transaction on {shard}")
        fault = actor.faults.popleft() if outermost and actor.faults and not readonly else None
        actor.depth += 1
        try:
            with faulted(self._inner, shard, readonly, fault, self._restart) as conn:
                yield conn
        finally:
            actor.depth -= 1

    def close(self) -> None:
        """The shared provider is the simulation's to close."""


@contextlib.contextmanager
def faulted(
    inner: ConnectionProvider,
    shard: str,
    readonly: bool,
    fault: str | None,
    restart: Callable[[str], None] | None,
) -> Iterator[DBAPIConnection]:
    """A connection of ``inner`` to ``shard``, for one transaction that takes ``fault``.

    ``fault`` is one of :data:`FAULTS` or :data:`SERVER_FAULTS` (None: none);
    ``restart`` kills and restarts a shard's server (the server faults).
    """
    with inner.connection(shard, readonly=readonly) as conn:
        if fault == "connection-lost":
            raise ConnectionLostError(
                f"simulated: the connection to {shard} was lost", errno=2013, shard=shard
            )
        if fault == "server-killed-in-transaction" and restart is not None:
            restart(shard)
        yield conn
        if fault == "server-killed-before-commit" and restart is not None:
            restart(shard)
        if fault == "cut-before-commit":
            raise CommitOutcomeUnknownError(
                f"simulated: the COMMIT to {shard} was cut before it reached the server",
                errno=2013,
                shard=shard,
            )
    if fault == "cut-after-commit":
        raise CommitOutcomeUnknownError(
            f"simulated: the COMMIT to {shard} committed, then the connection was cut",
            errno=2013,
            shard=shard,
        )
