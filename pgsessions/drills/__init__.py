"""Failover drills: a live workload through a fault, and a ledger checked against the database.

``pgsessions drill SCENARIO`` (see :mod:`.cli`); :func:`run_drill` is the same from Python.
"""

from .runner import DrillOptions, run_drill
from .scenarios import SCENARIOS

__all__ = ["SCENARIOS", "DrillOptions", "run_drill"]
