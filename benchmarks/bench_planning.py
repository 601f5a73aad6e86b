"""Benchmark the writer's planning (pure Python, no server): extraction, fingerprints, coalescing.

For the priced charges of a traffic model, per charge (best of ``--repeat``):

* ``extract``: :meth:`RowExtractor.extract` (the compiled path: rows and the
  fingerprint text), against the baseline ``reference``: the same rows
  through the declared objects (:meth:`RowExtractor.reference_rows`) and the
  fingerprint text by sorting and ``repr`` (:func:`canonical_text`), as the
  writer did before the extractor was compiled;
* ``plan``: :func:`plan_batch` for whole batches (units, fingerprints, slots);
* ``coalesce``: :func:`coalesce` of every shard's units;
* ``split``: the writer's routing of a planned batch (:func:`split_by_claim`
  into the claim round and the later round, and :func:`spread_events`),
  against the baseline ``split_reference``: the same results from the plain
  definitions the writer used before (one route per unit per use).

Run::

    .venv/bin/python benchmarks/bench_planning.py --events 40000
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from shardbill import ShardMap
from shardbill.rules import Charge, comms
from shardbill.tables.aggregates import Account
from shardbill.tables.catalog import billing_tables
from shardbill.workloads.synthetic import Traffic
from shardbill.writer.extraction import RowExtractor
from shardbill.writer.fingerprints import canonical_text
from shardbill.writer.planning import Unit, coalesce, plan_batch, split_by_claim, spread_events


def _best_us(func: Callable[[], object], count: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - started)
    return best / count * 1e6


def _spread_reference(units: Sequence[Unit], route: Callable[[int], str]) -> frozenset[str]:
    """spread_events as it was: every unit with money routed."""
    first: dict[str, str] = {}
    spread: set[str] = set()
    for unit in units:
        if not unit.rows:
            continue
        shard = route(unit.slot)
        if first.setdefault(unit.event_id, shard) != shard:
            spread.add(unit.event_id)
    return frozenset(spread)


def run(model: str, events: int, batch: int, repeat: int, seed: int) -> dict[str, Any]:
    """Microseconds per charge for each step, and the extract/reference ratio."""
    engine = comms.engine()
    charges: list[Charge] = []
    for chunk in Traffic(model=model, events=events, seed=seed).batches(5000):
        charges.extend(engine.price_batch(chunk).charges)
    gc.collect()
    gc.freeze()
    tables = billing_tables()
    extractor = RowExtractor(tables)
    shard_map = ShardMap.create([f"s{i}" for i in range(4)], slots=16384)

    def locate(key: object) -> tuple[int, str]:
        slot = shard_map.slot_for(key)  # type: ignore[arg-type]
        return slot, shard_map.assignment[slot]

    def reference() -> None:
        for c in charges:
            canonical_text(extractor.reference_rows(c), tables)

    def extract() -> None:
        for c in charges:
            extractor.extract(c)

    batches = [charges[i : i + batch] for i in range(0, len(charges), batch)]

    def plan() -> list[Any]:
        return [
            plan_batch(
                b,
                tables=extractor,
                shard_key=(Account(),),
                locate=locate,
                home_slot=shard_map.slot_for,
            )
            for b in batches
        ]

    planned = plan()

    def merge() -> None:
        for batch_plan in planned:
            coalesce(batch_plan.units, tables)

    forward: dict[int, str] = {}  # the writer's route: a forwarded slot, else the map's owner

    def route(slot: int) -> str:
        return forward.get(slot) or shard_map.owner(slot)

    def split_reference() -> None:
        for batch_plan in planned:
            units = batch_plan.units
            home = {u.event_id: route(u.slot) for u in units if u.home}
            [u for u in units if u.home or route(u.slot) == home[u.event_id]]
            [u for u in units if not (u.home or route(u.slot) == home[u.event_id])]
            _spread_reference(units, route)

    def split() -> None:
        for batch_plan in planned:
            split_by_claim(batch_plan.units, route)
            spread_events(batch_plan.units, route)

    n = len(charges)
    result = {
        "charges": n,
        "reference_us": _best_us(reference, n, repeat),
        "extract_us": _best_us(extract, n, repeat),
        "plan_us": _best_us(plan, n, repeat),
        "coalesce_us": _best_us(merge, n, repeat),
        "split_reference_us": _best_us(split_reference, n, repeat),
        "split_us": _best_us(split, n, repeat),
    }
    result["extract_speedup"] = result["reference_us"] / result["extract_us"]
    result["split_speedup"] = result["split_reference_us"] / result["split_us"]
    gc.unfreeze()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--batch", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--models", default="uniform,skewed,hot")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = {
        model: run(model, args.events, args.batch, args.repeat, args.seed)
        for model in args.models.split(",")
    }
    if args.json:
        print(json.dumps(report))
        return 0
    print(
        "model      reference  extract  (speed-up)   plan  coalesce  split-ref  split  (speed-up)"
        "   (us per charge)"
    )
    for model, r in report.items():
        print(
            f"{model:9} {r['reference_us']:9.2f} {r['extract_us']:8.2f}  "
            f"({r['extract_speedup']:.1f}x)"
            f" {r['plan_us']:8.2f} {r['coalesce_us']:8.2f} {r['split_reference_us']:9.2f}"
            f" {r['split_us']:6.2f}  ({r['split_speedup']:.1f}x)",
            file=sys.stdout,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
