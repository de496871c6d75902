"""Failover drills: a live workload through a fault, and a ledger checked against the database.

``pgsessions drill SCENARIO`` (see :mod:`.cli`); :func:`run_drill` is the same from Python.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .options import DrillOptions
from .scenarios import SCENARIOS

if TYPE_CHECKING:
    from .runner import run_drill

__all__ = ["SCENARIOS", "DrillOptions", "run_drill"]


def __getattr__(name: str) -> Any:
    # the runner loads the Agents SDK (~2 s): only on first use, not for `pgsessions --help`
    if name == "run_drill":
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
