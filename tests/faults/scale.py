"""How hard the fault suite pushes: the seeded CI subset, or the full run.

``SHARDBILL_FAULTS=full`` scales every scenario's iteration counts up to the
full run; anything else (the default) runs the bounded CI subset, in which
every scenario still injects its fault at least once. ``SHARDBILL_FAULTS_SEED``
(an integer, default 0) shifts every scenario's seed, so a full run can be
repeated on fresh random (but reproducible) moments.
"""

from __future__ import annotations

import os
import zlib

__all__ = ["BASE_SEED", "FULL", "iterations", "seed_for"]

FULL = os.environ.get("SHARDBILL_FAULTS", "").strip().lower() == "full"
"""True in the full run."""

BASE_SEED = int(os.environ.get("SHARDBILL_FAULTS_SEED", "0") or "0")
"""Added to every scenario's seed."""


def iterations(ci: int, full: int) -> int:
    """``full`` in the full run, else ``ci`` (both at least 1)."""
    if ci < 1 or full < ci:
        raise ValueError(f"need 1 <= ci <= full: ci={ci}, full={full}")
    return full if FULL else ci


def seed_for(name: str) -> int:
    """A stable seed for a scenario name (the same in every process and Python version)."""
    return (zlib.crc32(name.encode()) + BASE_SEED) & 0x7FFF_FFFF
