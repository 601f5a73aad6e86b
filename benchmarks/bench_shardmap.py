"""Benchmark the shard map against a consistent-hash ring (uhashring) and jump hash.

Run::

    .venv/bin/python benchmarks/bench_shardmap.py          # a table
    .venv/bin/python benchmarks/bench_shardmap.py --json   # one JSON object on stdout

What it measures, in one run on this machine:

* lookup time per key (``timeit``, best of ``--repeat`` runs) for an int, a str
  and a tuple key: ``ShardMap.shard_for`` and ``ShardMap.slot_for``;
  ``uhashring.HashRing(nodes, vnodes=160).get_node`` (its default ring: md5,
  160 points per node); and jump consistent hash (Lamping & Veach 2014) over the
  same xxh3 key hash ``shardbill.keys.key_hash``;
* balance: max/mean keys per shard for ``--keys`` account ids (0..N-1) on 30
  equal shards, next to a seeded uniformly random placement of as many keys
  (the sampling-noise floor no hash can beat);
* movement: the fraction of those keys whose shard changes when a 31st shard
  joins (ideal 1/31), and for the shard map also the slot-level fraction from
  ``plan_to``.

Targets (reported, not asserted): ``shard_for(int)`` <= 300 ns and faster than
uhashring; balance max/mean <= 1.01; the map's moved fraction within one slot
(1/16384) of 1/31.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import timeit
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from uhashring import HashRing

from shardbill.keys import key_hash
from shardbill.shardmap import ShardMap

INT_KEY = 123456789
STR_KEY = "acct-123456789"
TUPLE_KEY = (123456789, "sms")
KEYS = {"int": INT_KEY, "str": STR_KEY, "tuple": TUPLE_KEY}


def jump_hash(key: int, buckets: int) -> int:
    """Jump consistent hash of a 64-bit key into ``buckets`` (Lamping & Veach, 2014)."""
    bucket, jump = -1, 0
    while jump < buckets:
        bucket = jump
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        jump = int((bucket + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return bucket


class JumpRouter:
    """Jump hash over shardbill's key hash: shard names by bucket number."""

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def shard_for(self, key: Any) -> str:
        """The shard of ``key``."""
        return self.names[jump_hash(key_hash(key), len(self.names))]


def per_call_ns(func: Callable[[Any], object], key: object, number: int, repeat: int) -> float:
    """Best-of-``repeat`` time of one ``func(key)`` call, in nanoseconds."""
    timer = timeit.Timer("f(k)", globals={"f": func, "k": key})
    return min(timer.repeat(repeat=repeat, number=number)) / number * 1e9


def max_over_mean(owners: Iterable[str], shards: int, total: int) -> float:
    """Largest shard's key count over the mean count."""
    counts = Counter(owners)
    return max(counts.values()) / (total / shards)


def moved_fraction(before: Callable[[Any], str], after: Callable[[Any], str], total: int) -> float:
    """Fraction of keys 0..total-1 whose shard differs between two lookups."""
    return sum(1 for k in range(total) if before(k) != after(k)) / total


def run(keys: int, number: int, repeat: int) -> dict[str, Any]:
    """Run every measurement; return the results as a JSON-ready dict."""
    names30 = [f"s{i:02d}" for i in range(30)]
    map30 = ShardMap.create(names30)
    map31 = map30.add_shard("s30")
    ring30 = HashRing(nodes=names30, vnodes=160)
    ring31 = HashRing(nodes=[*names30, "s30"], vnodes=160)
    jump30, jump31 = JumpRouter(names30), JumpRouter([*names30, "s30"])

    lookups: dict[str, dict[str, float]] = {
        "shardmap.shard_for": {},
        "shardmap.slot_for": {},
        "uhashring.get_node": {},
        "jump_hash": {},
    }
    for kind, key in KEYS.items():
        lookups["shardmap.shard_for"][kind] = per_call_ns(map30.shard_for, key, number, repeat)
        lookups["shardmap.slot_for"][kind] = per_call_ns(map30.slot_for, key, number, repeat)
        lookups["uhashring.get_node"][kind] = per_call_ns(ring30.get_node, key, number // 4, repeat)
        lookups["jump_hash"][kind] = per_call_ns(jump30.shard_for, key, number // 4, repeat)
    ring_ns = lookups["uhashring.get_node"]
    speedup = {
        name: {kind: ring_ns[kind] / ns for kind, ns in times.items()}
        for name, times in lookups.items()
    }

    rng = random.Random(20240601)
    balance = {
        "shardmap": max_over_mean((map30.shard_for(k) for k in range(keys)), 30, keys),
        "uhashring": max_over_mean((ring30.get_node(k) for k in range(keys)), 30, keys),
        "jump_hash": max_over_mean((jump30.shard_for(k) for k in range(keys)), 30, keys),
        "random_placement_floor": max_over_mean(
            (names30[rng.randrange(30)] for _ in range(keys)), 30, keys
        ),
    }
    slot_counts = map30.slot_counts.values()
    moved = {
        "shardmap": moved_fraction(map30.shard_for, map31.shard_for, keys),
        "shardmap_slots": map30.plan_to(map31).moved_fraction,
        "uhashring": moved_fraction(ring30.get_node, ring31.get_node, keys),
        "jump_hash": moved_fraction(jump30.shard_for, jump31.shard_for, keys),
        "ideal": 1 / 31,
    }
    int_ns = lookups["shardmap.shard_for"]["int"]
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "keys": keys,
        "slots": map30.slots,
        "lookup_ns": lookups,
        "speedup_vs_uhashring": speedup,
        "balance_max_over_mean": balance,
        "slot_balance_max_over_mean": max(slot_counts) / (map30.slots / 30),
        "moved_fraction_30_to_31": moved,
        "targets": {
            "shard_for_int_le_300ns": int_ns <= 300,
            "shard_for_int_faster_than_uhashring": int_ns < ring_ns["int"],
            "balance_le_1.01": balance["shardmap"] <= 1.01,
            "moved_within_one_slot_of_1/31": abs(moved["shardmap_slots"] - 1 / 31)
            <= 1 / map30.slots,
        },
    }


def render(result: dict[str, Any]) -> str:
    """Format the results as a plain-text report."""
    lines = [
        f"Python {result['python']} on {result['machine']}; {result['keys']} keys, "
        f"30 -> 31 shards, {result['slots']} slots",
        "",
        "lookup ns (best of repeats)   int     str   tuple   x faster than uhashring (int)",
    ]
    for name, times in result["lookup_ns"].items():
        ratio = result["speedup_vs_uhashring"][name]["int"]
        lines.append(
            f"  {name:<24}{times['int']:>7.0f}{times['str']:>8.0f}{times['tuple']:>8.0f}"
            f"   {ratio:.2f}"
        )
    lines += ["", "balance: max/mean keys per shard (30 shards)"]
    for name, value in result["balance_max_over_mean"].items():
        lines.append(f"  {name:<24}{value:.4f}")
    lines.append(f"  {'shardmap (slots)':<24}{result['slot_balance_max_over_mean']:.4f}")
    lines += ["", "moved fraction when a 31st shard joins (ideal 1/31 = 0.03226)"]
    for name, value in result["moved_fraction_30_to_31"].items():
        lines.append(f"  {name:<24}{value:.5f}")
    lines += ["", "targets"]
    for name, ok in result["targets"].items():
        lines.append(f"  {name:<40}{'met' if ok else 'MISSED'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print a table or one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--keys", type=int, default=1_000_000, help="keys for balance and movement (1000000)"
    )
    parser.add_argument("--number", type=int, default=200_000, help="calls per timing run")
    parser.add_argument("--repeat", type=int, default=7, help="timing runs; the best counts")
    args = parser.parse_args(argv)
    if args.keys < 30 or args.number < 4 or args.repeat < 1:
        parser.error("--keys must be >= 30, --number >= 4, --repeat >= 1")
    result = run(args.keys, args.number, args.repeat)
    print(json.dumps(result, sort_keys=True) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
