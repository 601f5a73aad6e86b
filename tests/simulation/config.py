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
    "repeat-inside-call": "issue 13 item 1: a duplicate inside one write() call is applied twice",
    "same-id-other-account": (
        "issue 13 item 2: the same event id with other content on another slot applies again"
    ),
    "split-event": "issue 13 item 3: an event split over two calls lands on another slot",
    "bigint-row-overflow": "issue 13 item 4: a row's running sum can leave BIGINT",
    "hostile-decimal-context": "issue 13 item 5: money conversion depends on the decimal context",
    "prune-horizon": (
        "issue 13 item 6: prune ignores the writer's clock; a redelivery after prune, or an "
        "event older than the horizon, applies again"
    ),
    "strict-result": "issue 13 item 7: a result with conflicts says ok=True",
    "overlapping-multi-slot-delivery": (
        "found by this simulation (issue 13 items 2 and 7): two calls delivering one event with "
        "charges on several slots at the same time both report it applied"
    ),
    "competing-plans": (
        "issue 14 item 1: a second resharder with another plan of the same epoch carries on"
    ),
    "replan-after-crash": (
        "issue 14 item 2: after a crash between fence and publish a different plan is accepted"
    ),
    "same-plan-twice": "issue 14 item 3: two live resharders for one plan merge a chunk twice",
    "fan-out-reads-during-moves": (
        "issue 14 items 4 and 7: totals() paused between its shard reads while slots move"
    ),
    "old-map-reads-during-moves": (
        "issue 14 items 5 and 7: rows() with an older map paused while its slot moves"
    ),
    "read-removal-from-new-map": (
        "issue 14 item 6: totals() from the store's map under-count while a shard is removed"
    ),
    "reader-from-store": "issue 14 item 8: Reader(shard_map=store) fails on the first read",
    "careless-ensure-schema": (
        "issue 14 item 11: ensure_schema() on a new shard makes the reshard onto it a no-op"
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
        backend: ``sqlite`` (one process, files in a temp dir) or ``mariadb``.
        accounts: how many accounts events are billed to.
        slots: the shard map's slot count (small, so that slots move often).
    """

    features: frozenset[str] = attrs.field(
        default=frozenset(SAFE_FEATURES), converter=frozenset, validator=_known
    )
    backend: str = attrs.field(
        default="sqlite", validator=attrs.validators.in_(("sqlite", "mariadb"))
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
