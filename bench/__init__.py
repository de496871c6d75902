"""Benchmarks of pgsessions against its peers (issue 7): `pgsessions bench`, `python -m bench`.

Modules: payloads (items), contenders (the five stores), harness (workloads, rounds, guard),
run (one run as a dict), report (machine, ratios, tables), cli (options and main).
"""

WORKLOADS = ("turn", "history", "read-heavy", "runner")
