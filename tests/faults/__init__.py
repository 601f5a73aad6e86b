"""The fault-injection suite: no event lost, none counted twice, whatever fails.

See ``docs/explanation/fault-injection.md`` for what each scenario injects and
``docs/howto/run-the-fault-suite.md`` for the CI subset and the full run.
"""
