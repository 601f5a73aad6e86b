"""``shardbill worker`` that SIGKILLs itself just before its Nth offset commit (fault tests).

``python -m tests.support.kafka_worker N worker ARGS...`` runs ``shardbill
worker ARGS...`` with :meth:`KafkaSource.commit` replaced by one that, on its Nth
call, kills the process with SIGKILL: after the batch's shard transactions
committed, before its offsets did, the worst moment for exactly-once.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping

from shardbill.cli import main
from shardbill.worker.kafka import KafkaSource
from shardbill.worker.records import Partition


def _run(kill_at: int, argv: list[str]) -> int:
    real = KafkaSource.commit
    calls = 0

    def commit(self: KafkaSource, offsets: Mapping[Partition, int]) -> None:
        nonlocal calls
        calls += 1
        if calls == kill_at:
            print(f"kafka_worker: SIGKILL before commit {calls}: {dict(offsets)}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        real(self, offsets)

    KafkaSource.commit = commit  # type: ignore[method-assign]
    return main(argv)


if __name__ == "__main__":
    sys.exit(_run(int(sys.argv[1]), sys.argv[2:]))
