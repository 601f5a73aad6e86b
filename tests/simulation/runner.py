"""Run the simulation for a seed: hypothesis drives it, shrinks a failure, prints the replay.

:func:`run` is what the CI test and ``python -m tests.simulation`` call.
"""

from __future__ import annotations

import logging
import math
import time
import traceback

import attrs
from hypothesis import HealthCheck, Phase, Verbosity, seed, settings
from hypothesis.stateful import get_state_machine_test

from tests.simulation.config import ALL_FEATURES, SAFE_FEATURES, SimConfig
from tests.simulation.machine import SimMachine, Violation

#: Rules per example: long enough for a reshard to interleave with writes and faults.
LENGTH = 40


@attrs.frozen(kw_only=True)
class RunReport:
    """What one seed's run did."""

    seed: int
    steps: int
    examples: int
    seconds: float
    failure: str | None = None


def replay_command(seed_value: int, steps: int, config: SimConfig) -> str:
    """The command that replays a run."""
    if config.features == frozenset(ALL_FEATURES):
        features = " --all-features"
    else:
        extra = sorted(config.features - set(SAFE_FEATURES))
        missing = sorted(set(SAFE_FEATURES) - config.features)
        features = "".join(f" --feature {f}" for f in extra)
        features += "".join(f" --without {f}" for f in missing)
    return (
        f"python -m tests.simulation --seed {seed_value} --steps {steps}"
        f" --backend {config.backend}{features}"
    )


class _Counted(SimMachine):
    total_steps = 0
    examples = 0

    def teardown(self) -> None:
        type(self).total_steps += self.steps
        type(self).examples += 1
        super().teardown()


def run(
    seed_value: int,
    steps: int,
    config: SimConfig,
    *,
    length: int = LENGTH,
    shrink: bool = True,
    verbose: bool = False,
) -> RunReport:
    """Run about ``steps`` scheduler steps from ``seed_value``; a failure is shrunk and reported."""
    machine = type("Simulation", (_Counted,), {"config": config, "total_steps": 0, "examples": 0})
    phases = [Phase.generate, Phase.shrink] if shrink else [Phase.generate]
    test = get_state_machine_test(
        machine,
        settings=settings(
            max_examples=max(1, math.ceil(steps / length)),
            stateful_step_count=length,
            deadline=None,
            database=None,
            phases=phases,
            suppress_health_check=list(HealthCheck),
            verbosity=Verbosity.normal if verbose else Verbosity.quiet,
            report_multiple_bugs=False,
            print_blob=False,
        ),
    )
    # The library logs every conflict and retry it meets; the trace says what matters.
    # The level is restored afterwards: other tests in the process capture those logs.
    library = logging.getLogger("shardbill")
    level = library.level
    library.setLevel(logging.CRITICAL)
    started = time.monotonic()
    failure = None
    try:
        seed(seed_value)(test)()
    except Exception as exc:
        where = ""
        if not isinstance(exc, Violation):  # the harness or the library raised: say where
            where = "".join(traceback.format_exception(exc)[-12:])
        failure = (
            f"{type(exc).__name__}: {exc}\n{where}"
            f"replay: {replay_command(seed_value, steps, config)}"
        )
    finally:
        library.setLevel(level)
    return RunReport(
        seed=seed_value,
        steps=machine.total_steps,
        examples=machine.examples,
        seconds=time.monotonic() - started,
        failure=failure,
    )
