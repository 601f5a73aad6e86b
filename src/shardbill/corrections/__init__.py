"""Corrections: cancel and amend applied events, each exactly once, with an audit trail (issue 20).

* :mod:`shardbill.corrections.records` (pure): a correction's record, the
  ledger id of a revision, the deltas from one content to another;
* :mod:`shardbill.corrections.store`: the ``shardbill_corrections`` table
  and the ledger, read on every shard;
* :mod:`shardbill.corrections.correct`: :class:`Corrector`.

Level: with the pipeline and the resharder, above the writer, the periods and
the map stores (``corrections.records`` is pure); the audit and repair import it
(``tests/test_layers.py``).
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
