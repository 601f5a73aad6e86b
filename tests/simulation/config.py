"""What the simulation may do: the feature flags, in ONE place, and the run settings.

Every adversarial feature that makes today's code fail on a known, not yet
fixed bug is listed in :data:`KNOWN_OPEN` with the issue item it reproduces.
The CI test runs with these features off (and says so in its output); the
command line turns them on with ``--all-features`` (or one by one with
``--feature NAME``) to reproduce the bugs. When a fix lands, delete its line
here: the feature is then on in CI too, and guards the fix for good.
"""

from __future__ import annotations

import attrs

#: feature name -> the known bug it triggers (remove the line when the fix is merged).
KNOWN_OPEN: dict[str, str] = {
    "spread-headroom-race": (
        "issue 13 (known open race): an event whose charges land on two shards is judged by "
        "the writer's look-ahead before it writes; a concurrent call that takes the last "
        "headroom of one of its rows in between leaves it half applied and failed"
    ),
    "overlapping-multi-slot-delivery": (
        "issue 13 (reporting, not money): two overlapping calls delivering one event with "
        "charges on several shards can both report it applied, each having applied a part"
    ),
}

#: Features with no known open bug: always on (listed so --feature can name them).
SAFE_FEATURES: tuple[str, ...] = (
    "repeats-across-calls",
    "reordering",
    "late-deliveries",
    "same-id-changed-content",
    "bigint-edge-values",
    "commit-cuts",
    "connection-loss",
    "crashes",
    "pauses",
    "clock-jumps",
    "prune",
    "resharding",
    "shard-removal",
    "stale-writer",
    "pipeline",
    "reads",
    "routed-reads-during-moves",
    "out-of-range-values",
    "publishers",
    # Each of these found a bug of issues 13 or 14 on 46f417f; on since the fixes landed.
    "repeat-inside-call",
    "same-id-other-account",
    "bigint-row-overflow",
    "hostile-decimal-context",
    "prune-horizon",
    "strict-result",
    "competing-plans",
    "replan-after-crash",
    "same-plan-twice",
    "fan-out-reads-during-moves",
    "old-map-reads-during-moves",
    "revert",
    "read-removal-from-new-map",
    "reader-from-store",
    "careless-ensure-schema",
    # On since the model follows numbered parts (each half of a split event is refused
    # as incomplete; the whole event applies once).
    "split-event",
    # Issue 20: cancels of applied pipeline events (shardbill.corrections), their records
    # moved with their slots by reshards.
    "corrections",
    # Backend "servers" only: a shard server SIGKILLed and restarted between steps, and
    # inside a transaction (before its COMMIT, or with every statement of it).
    "server-kills",
    # Backends "mariadb" and "servers" only: writer w1 is a process of its own
    # (tests/simulation/processes.py), killed for real at its boundaries.
    "writer-processes",
)

ALL_FEATURES: tuple[str, ...] = (*SAFE_FEATURES, *KNOWN_OPEN)


def _known(
    _inst: object, _attribute: attrs.Attribute[frozenset[str]], value: frozenset[str]
) -> None:
    unknown = sorted(value - set(ALL_FEATURES))
    if unknown:
        raise ValueError(f"unknown simulation feature(s) {unknown}; choose from {ALL_FEATURES}")


@attrs.frozen(kw_only=True)
class SimConfig:
    """One simulation run's switches.

    Attributes:
        features: the features that are on.
        backend: ``sqlite`` (one process, files in a temp dir), ``mariadb``
            (databases on the test server) or ``servers`` (two private servers
            the scheduler may kill and restart).
        accounts: how many accounts events are billed to.
        slots: the shard map's slot count (small, so that slots move often).
    """

    features: frozenset[str] = attrs.field(
        default=frozenset(SAFE_FEATURES), converter=frozenset, validator=_known
    )
    backend: str = attrs.field(
        default="sqlite", validator=attrs.validators.in_(("sqlite", "mariadb", "servers"))
    )
    accounts: int = 12
    slots: int = 32

    def on(self, feature: str) -> bool:
        """True when ``feature`` is switched on."""
        if feature not in ALL_FEATURES:  # a typo in the simulation itself
            raise ValueError(f"unknown simulation feature {feature!r}")
        return feature in self.features

    @classmethod
    def ci(cls, backend: str = "sqlite") -> SimConfig:
        """Every feature without a known open bug (what CI runs)."""
        return cls(features=frozenset(SAFE_FEATURES), backend=backend)

    @classmethod
    def everything(cls, backend: str = "sqlite") -> SimConfig:
        """Every feature, the known open bugs' included (``--all-features``)."""
        return cls(features=frozenset(ALL_FEATURES), backend=backend)


def describe_off(config: SimConfig) -> str:
    """A line per feature that is off because of a known open bug (for CI output)."""
    off = [f"  {name}: {why}" for name, why in KNOWN_OPEN.items() if not config.on(name)]
    if not off:
        return "every simulation feature is on"
    return "simulation features off (known open bugs):\n" + "\n".join(off)
