"""Benchmarks of pgsessions against its peers (issue 7): `pgsessions bench`, `python -m bench`.

Modules: payloads (items), contenders (the five stores), harness (workloads, rounds, guard),
wal (WAL bytes per add), servercpu (a server's CPU time from /proc), run (one run as a dict),
report (machine, ratios, tables), cli (options and main); fleet (`python -m bench.fleet`:
many conversations from several processes with think time).
"""

WORKLOADS = ("wal", "turn", "adds", "history", "read-heavy", "runner", "threads", "agent")
#: the contenders of the agent workload (issue 16)
AGENT_CONTENDERS = ("pgsessions-routed", "pgsessions-primary", "sqlalchemy")
