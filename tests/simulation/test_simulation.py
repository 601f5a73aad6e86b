"""The simulation in CI: a bounded set of seeds with every safe feature on, and the mutations.

The full runs (more seeds, more steps, the known open bugs' features, hours
on every core) are the command's: ``python -m tests.simulation --help`` and
``docs/explanation/simulation.md``.
"""

from __future__ import annotations

import datetime as dt
import signal
from decimal import Decimal
from pathlib import Path

import pytest

from shardbill import ShardMap
from shardbill.rules import Charge
from shardbill.writer import AggregationWriter, WriterSettings
from tests.simulation.actors import Actor, SimulatedCrash
from tests.simulation.backends import BACKENDS, URLS
from tests.simulation.config import ALL_FEATURES, KNOWN_OPEN, SAFE_FEATURES, SimConfig, describe_off
from tests.simulation.machine import START, TABLES
from tests.simulation.mutations import MUTATIONS, Mutation
from tests.simulation.processes import ProcessWriter
from tests.simulation.runner import run

#: CI budget: seeds x steps for the clean run, and the most a mutation may take to be caught.
CI_SEEDS = range(6)
CI_STEPS = 400
MUTATION_SEEDS = range(10)
MARIADB_SEEDS = range(2)
MARIADB_STEPS = 120
SERVER_SEEDS = range(1)
#: Seeds that found a hole once (docs/explanation/simulation.md): each stays green.
REGRESSION_SEEDS = (
    *(1066, 2005, 3039, 3074, 5066, 5130, 5139, 6088, 7013, 7066),
    *(8114, 9024, 9069, 9225, 30377, 50137, 60241, 60417),
)


def test_the_feature_flags_are_one_consistent_list() -> None:
    """Every known-open feature names its issue item, and none is also listed as safe."""
    assert not set(KNOWN_OPEN) & set(SAFE_FEATURES)
    assert all("issue" in why for why in KNOWN_OPEN.values())
    assert set(ALL_FEATURES) == set(KNOWN_OPEN) | set(SAFE_FEATURES)
    with pytest.raises(ValueError, match="unknown simulation feature"):
        SimConfig(features=frozenset({"no-such-feature"}))


@pytest.mark.parametrize("seed", CI_SEEDS)
def test_no_invariant_breaks_with_the_safe_features(
    seed: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """Writers, pipeline, readers, prune, publishers and resharders under faults: the model holds.

    Features that hit a known open bug are off (the output lists them).
    """
    config = SimConfig.ci()
    with capsys.disabled():
        if seed == CI_SEEDS[0]:
            print("\n" + describe_off(config))
    report = run(seed, CI_STEPS, config)
    assert report.steps > CI_STEPS // 2, report
    assert report.failure is None, report.failure


@pytest.mark.parametrize("seed", REGRESSION_SEEDS)
def test_the_seeds_that_found_holes_stay_green(seed: int) -> None:
    """Each seed that once found a bug (fixed test first) runs clean on the current code."""
    report = run(seed, CI_STEPS, SimConfig.ci(), shrink=False)
    assert report.failure is None, report.failure


@pytest.mark.mysql
@pytest.mark.parametrize("seed", MARIADB_SEEDS)
def test_no_invariant_breaks_on_mariadb(seed: int, mysql_server: object) -> None:
    """The same simulation with every shard a database on MariaDB (PyMySQL)."""
    del mysql_server  # skips (or fails under CI) without a server
    report = run(seed, MARIADB_STEPS, SimConfig.ci(backend="mariadb"))
    assert report.steps > MARIADB_STEPS // 2, report
    assert report.failure is None, report.failure


@pytest.mark.mysql
@pytest.mark.parametrize("seed", SERVER_SEEDS)
def test_no_invariant_breaks_with_server_restarts(seed: int) -> None:
    """The shards on two private servers, which the scheduler SIGKILLs and restarts between
    steps (InnoDB crash recovery): every acknowledged commit is there, every actor goes on."""
    from tests.support.server_fixtures import require_binaries
    from tests.support.servers import ServerSettings

    require_binaries(ServerSettings())
    report = run(seed, MARIADB_STEPS, SimConfig.ci(backend="servers"))
    assert report.steps > MARIADB_STEPS // 2, report
    assert report.failure is None, report.failure


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
def test_the_simulation_catches_the_mutation(mutation: Mutation) -> None:
    """With one safeguard removed, some seed of the CI budget finds a violation."""
    config = SimConfig.ci()
    failures = []
    with pytest.MonkeyPatch.context() as mp:
        mutation.apply(mp)
        for seed in MUTATION_SEEDS:
            report = run(seed, CI_STEPS, config, shrink=False)
            if report.failure is not None:
                failures.append(report.failure)
                break
    assert failures, (
        f"no seed in {list(MUTATION_SEEDS)} caught {mutation.name} ({mutation.removes})"
    )


@pytest.mark.mysql
def test_a_writer_process_killed_at_a_boundary_dies_and_a_new_one_applies_once(
    mysql_server: object, tmp_path: Path
) -> None:
    """The harness's writer process is killed for real: SIGKILLed at its first boundary,
    it is gone and wrote nothing; a new process then applies the call once, and the same
    call again is a duplicate."""
    del mysql_server  # skips (or fails under CI) without a server
    provider, cleanup = BACKENDS["mariadb"](tmp_path, ("s0", "s1"))
    shard_map = ShardMap.create(["s0", "s1"], slots=64)
    try:
        with AggregationWriter(shard_map=shard_map, provider=provider, tables=TABLES) as setup:
            setup.ensure_schema()
        moment = dt.datetime.fromtimestamp(START, dt.UTC)
        charges = [
            Charge(
                event_id=f"p{i}",
                account=i,
                product="sms",
                quantity=Decimal(1),
                amount=Decimal("0.25"),
                currency="USD",
                time=moment,
                rule="test.rule",
                rule_version="1",
            )
            for i in range(6)
        ]
        actor = Actor("w1")

        def process_writer() -> ProcessWriter:
            return ProcessWriter(
                actor=actor,
                urls=URLS,
                settings=WriterSettings(max_workers=1),
                clock=lambda: START,
                store=lambda: (shard_map, {shard_map.epoch: shard_map}, None),
                restart=None,
            )

        killed = process_writer()
        op = actor.begin("write", lambda: killed.write(charges))
        assert not op.done
        assert op.where.startswith("transaction on")
        child = killed._process  # the harness's own child, under test here
        op.crash()
        assert isinstance(op.error, SimulatedCrash)
        assert not child.is_alive()
        assert child.exitcode == -signal.SIGKILL
        killed.close()

        def ledger_rows() -> int:
            total = 0
            for shard in ("s0", "s1"):
                with provider.connection(shard, readonly=True) as conn:
                    cursor = conn.cursor()
                    cursor.execute("SELECT COUNT(*) FROM shardbill_ledger", ())
                    total += int(cursor.fetchone()[0])
            return total

        assert ledger_rows() == 0
        fresh = process_writer()
        try:
            for expected in ("applied", "duplicate"):
                op = actor.begin("write", lambda: fresh.write(charges))
                while not op.done:
                    op.advance()
                assert op.error is None, op.error
                states = {state.value for state in op.value.events.values()}  # type: ignore[attr-defined]
                assert states == {expected}
        finally:
            fresh.close()
        assert ledger_rows() > 0
    finally:
        provider.close()
        cleanup()
