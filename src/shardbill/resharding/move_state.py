"""Where one moving slot stands, as read from both sides' ownership rows.

Kept apart from the resharder so the states have one name each (no bare
strings in the code that decides them) and can be imported by the status view
and the command line without pulling in the resharder.
"""

from __future__ import annotations

import enum

__all__ = ["MoveState"]


class MoveState(enum.StrEnum):
    """A moving slot's state in a reshard (:meth:`Resharder.status`)."""

    PENDING = "pending"
    """The source owns the slot; the target has no row, an old one, or this move's ``incoming``."""
    FENCED = "fenced"
    """The source forwards writers to the target, which receives the slot from the source."""
    FINISHED = "finished"
    """The target owns the slot and the source forwards to it."""
    CONFLICT = "conflict"
    """The ownership rows fit no step of this move (:meth:`Resharder.run` says how to fix them)."""
