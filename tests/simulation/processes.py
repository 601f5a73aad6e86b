"""A writer in a process of its own, under the scheduler (the MariaDB backends).

On ``mariadb`` and ``servers`` (feature ``writer-processes``), writer ``w1``
is a :class:`ProcessWriter`: an :class:`~shardbill.writer.AggregationWriter`
in a child process (``spawn``: nothing of the scheduler's threads is
inherited), with connections of its own. It runs under the same scheduler
as the thread actors, through a pipe:

* the child stops at the start of every outermost transaction (the same
  step boundary as :class:`~tests.simulation.actors.GatedProvider`), tells
  the parent where, and waits; the parent's operation thread parks at that
  boundary for the scheduler and, once released, sends the child the
  simulated clock, the map store's state (map, history, claim: what the
  store would answer the child's ``load()`` at that moment) and the fault
  armed for the transaction, if any;
* a kill at a boundary is a real one: the parent SIGKILLs the child (its
  memory, its connections, its open transactions go with it) and the actor
  is rebuilt with a new process;
* the armed faults are applied in the child as in the threads
  (:func:`~tests.simulation.actors.faulted`); a server kill asks the parent,
  which owns the servers, to kill and restart the shard's server.

Everything else (the model, the checks, the schedule) is the threads' own:
a seed draws the same actions whether ``w1`` is a thread or a process.
"""

from __future__ import annotations

import contextlib
import decimal
import multiprocessing
import os
import pickle
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

from shardbill import PooledProvider, ShardMap
from shardbill.errors import ShardbillError
from shardbill.mapstore.claim import ReshardClaim
from shardbill.providers.base import DBAPIConnection
from shardbill.writer import AggregationWriter, WriterSettings
from tests.simulation.actors import STEP_TIMEOUT, Actor, HungError, SimulatedCrash, faulted

__all__ = ["ProcessWriter"]

#: What the parent sends at each boundary: the map store as the child may read it.
StoreState = tuple[ShardMap, dict[int, ShardMap], ReshardClaim | None]


class ProcessWriter:
    """``write(charges)`` in a child process, one boundary at a time (see the module).

    Args:
        actor: the actor whose operation thread calls :meth:`write`.
        urls: the shards' connection URLs (the child opens its own pool).
        settings: the writer's settings.
        clock: the simulated clock.
        store: the map store's state, read at every boundary.
        restart: kills and restarts a shard's server (None: no server faults).
    """

    def __init__(
        self,
        *,
        actor: Actor,
        urls: Mapping[str, str],
        settings: WriterSettings,
        clock: Callable[[], float],
        store: Callable[[], StoreState],
        restart: Callable[[str], None] | None,
    ) -> None:
        self._actor = actor
        self._clock = clock
        self._store = store
        self._restart = restart
        self._args = (dict(urls), settings)
        self._process: Any = None  # started at the first call (most examples never call)
        self._pipe: Any = None
        self._busy = False

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child_end = context.Pipe()
        self._process = context.Process(
            target=_child_main,
            args=(child_end, *self._args),
            name=f"sim-{self._actor.name}",
            daemon=True,
        )
        self._process.start()
        child_end.close()

    def write(self, charges: Sequence[object]) -> object:
        """The child's ``AggregationWriter.write(charges)``, in the calling thread's decimal
        context, parked at each of its boundaries; a kill there SIGKILLs the child."""
        if self._process is None:
            self._start()
        self._busy = True
        self._send(("write", list(charges), decimal.getcontext().copy(), *self._state()))
        try:
            while True:
                message = self._receive()
                kind = message[0]
                if kind == "park":
                    _, where, readonly = message
                    self._actor.gate(where)  # raises SimulatedCrash when the scheduler kills
                    actor = self._actor
                    fault = actor.faults.popleft() if actor.faults and not readonly else None
                    self._send(("go", *self._state(), fault))
                elif kind == "restart":
                    if self._restart is not None:
                        self._restart(message[1])
                    self._send(("restarted",))
                elif kind == "done":
                    self._busy = False
                    return message[1]
                else:  # "error"
                    self._busy = False
                    raise message[1]
        except SimulatedCrash:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL the child (a process kill: nothing it held survives)."""
        if self._process is None:
            return
        if self._process.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._process.pid, signal.SIGKILL)
        self._process.join(STEP_TIMEOUT)

    def close(self) -> None:
        """Stop the child: asked to, between calls; killed, in the middle of one."""
        if self._process is None:
            return
        if self._process.is_alive() and not self._busy:
            with contextlib.suppress(OSError):
                self._pipe.send(("stop",))
            self._process.join(10)
        self.kill()
        self._pipe.close()

    def _state(self) -> tuple[float, StoreState]:
        return self._clock(), self._store()

    def _send(self, message: tuple[object, ...]) -> None:
        try:
            self._pipe.send(message)
        except OSError as exc:
            raise HungError(f"{self._actor.name}'s process is gone: {exc}") from exc

    def _receive(self) -> tuple[Any, ...]:
        if not self._pipe.poll(STEP_TIMEOUT):
            raise HungError(
                f"{self._actor.name}'s process did not reach a step boundary within "
                f"{STEP_TIMEOUT:.0f} s"
            )
        try:
            message: tuple[Any, ...] = self._pipe.recv()
        except EOFError as exc:
            raise HungError(f"{self._actor.name}'s process died on its own") from exc
        return message


# ---------------------------------------------------------------------- the child


class _State:
    """What the parent sent last: the clock and the map store's state."""

    def __init__(self) -> None:
        self.clock = 0.0
        self.store: StoreState | None = None

    def update(self, clock: float, store: StoreState) -> None:
        self.clock = clock
        self.store = store


class _RelayedStore:
    """The child's map store: the parent's, as it stood at the last boundary (read-only)."""

    def __init__(self, state: _State) -> None:
        self._state = state

    def _parts(self) -> StoreState:
        assert self._state.store is not None
        return self._state.store

    def load(self) -> ShardMap:
        return self._parts()[0]

    def epoch(self) -> int | None:
        return self._parts()[0].epoch

    def publish(self, new_map: ShardMap, *, expected_epoch: int | None) -> None:
        raise ShardbillError("a simulated writer process does not publish maps")

    def history(self) -> tuple[int, ...]:
        return tuple(sorted(self._parts()[1]))

    def load_epoch(self, epoch: int) -> ShardMap:
        return self._parts()[1][epoch]

    def load_claim(self) -> ReshardClaim | None:
        return self._parts()[2]

    def swap_claim(self, claim: ReshardClaim, *, expected_version: int | None) -> None:
        raise ShardbillError("a simulated writer process does not claim reshards")


class _ChildGate:
    """The child's provider: the step boundary over the pipe, then the armed fault."""

    def __init__(self, inner: PooledProvider, pipe: Connection, state: _State) -> None:
        self._inner = inner
        self._pipe = pipe
        self._state = state
        self._depth = 0

    @contextlib.contextmanager
    def connection(self, shard: str, *, readonly: bool = False) -> Iterator[DBAPIConnection]:
        fault = None
        if self._depth == 0:
            self._pipe.send(("park", f"transaction on {shard}", readonly))
            _, clock, store, fault = self._pipe.recv()
            self._state.update(clock, store)
        self._depth += 1
        try:
            with faulted(self._inner, shard, readonly, fault, self._restart) as conn:
                yield conn
        finally:
            self._depth -= 1

    def _restart(self, shard: str) -> None:
        self._pipe.send(("restart", shard))
        self._pipe.recv()

    def close(self) -> None:
        """The pool is the child's to close, when it stops."""


def _child_main(pipe: Connection, urls: dict[str, str], settings: WriterSettings) -> None:
    from tests.simulation.machine import TABLES

    state = _State()
    provider = PooledProvider.from_urls(urls)
    writer: AggregationWriter | None = None
    try:
        while True:
            message = pipe.recv()
            if message[0] == "stop":
                return
            _, charges, context, clock, store = message
            state.update(clock, store)
            if writer is None:  # built at the first call: its map comes with it
                writer = AggregationWriter(
                    shard_map=_RelayedStore(state),  # type: ignore[arg-type]
                    provider=_ChildGate(provider, pipe, state),
                    tables=TABLES,
                    settings=settings,
                    clock=lambda: state.clock,
                )
            try:
                with decimal.localcontext(context):
                    result: tuple[object, ...] = ("done", writer.write(charges))
            except Exception as exc:  # reported to the parent, which judges it
                result = ("error", exc)
            try:
                pipe.send(result)
            except (pickle.PicklingError, TypeError, AttributeError) as exc:
                pipe.send(("error", RuntimeError(f"unpicklable result {result!r}: {exc}")))
    finally:
        if writer is not None:
            writer.close()
        provider.close()
