"""The programs behind ``shardbill demo`` and ``shardbill bench``, and their traffic.

* :mod:`shardbill.workloads.synthetic`: seeded traffic models (uniform,
  skewed, hot shard) for tests and benchmarks (pure).
* :mod:`shardbill.workloads.demo`: the ``shardbill demo`` run.
* :mod:`shardbill.workloads.bench`: the ``shardbill bench`` run.
* :mod:`shardbill.workloads.progress`: the one-line progress bar.

May import anything in the library below the command line (writer,
pipeline, resharding, map stores, providers); never :mod:`shardbill.cli`.
"""
