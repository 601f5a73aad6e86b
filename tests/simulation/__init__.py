"""A seeded, model-based simulation of shardbill's write path (issue 15).

Writers, the pipeline, readers, prune, map-store publishers and resharders
run as actors under one scheduler that chooses the interleaving step by
step, with faults and adversarial input chosen by the seed; a reference
model checks every step. See ``docs/explanation/simulation.md``.

* :mod:`tests.simulation.config`: the feature flags (the known open bugs in one place);
* :mod:`tests.simulation.actors`: actors, step gates and faults;
* :mod:`tests.simulation.model`: the reference model;
* :mod:`tests.simulation.results`: the one function that reads a write's result;
* :mod:`tests.simulation.machine`: the hypothesis state machine;
* :mod:`tests.simulation.runner` and ``__main__``: the command;
* :mod:`tests.simulation.mutations`: deliberately broken variants it must catch.
"""
