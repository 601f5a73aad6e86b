"""Corrections: cancel and amend applied events, each exactly once, with an audit trail (issue 20).

* :mod:`shardbill.corrections.records` (pure): a correction's record, the
  ledger id of a revision, the deltas from one content to another;
* :mod:`shardbill.corrections.store`: the ``shardbill_corrections`` table
  and the ledger, read on every shard;
* :mod:`shardbill.corrections.correct`: :class:`Corrector`.
"""

from shardbill.corrections.correct import CorrectionResult, Corrector
from shardbill.corrections.records import (
    CorrectionKind,
    CorrectionRecord,
    EventFilter,
    RecordState,
    ledger_id,
)
from shardbill.corrections.store import read_records

__all__ = [
    "CorrectionKind",
    "CorrectionRecord",
    "CorrectionResult",
    "Corrector",
    "EventFilter",
    "RecordState",
    "ledger_id",
    "read_records",
]
