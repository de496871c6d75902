"""What the demo measures: turns, errors, session call latencies, usage it produced."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..sessions import PostgresSession

if TYPE_CHECKING:
    from agents.items import TResponseInputItem

    from ..router.protocol import Router


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by nearest rank, or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


@dataclass
class UsageTally:
    runs: int = 0
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0

    def add(self, usage: Any) -> None:
        self.runs += 1
        self.requests += usage.requests or 0
        self.input_tokens += usage.input_tokens or 0
        self.output_tokens += usage.output_tokens or 0
        self.total_tokens += usage.total_tokens or 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass
class DemoStats:
    """Counters shared by every conversation (one event loop: no locks needed)."""

    started: float = field(default_factory=time.monotonic)
    turns: int = 0
    turn_times: list[float] = field(default_factory=list)  # completion times (monotonic)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(
        default_factory=lambda: {"get_items": [], "add_items": [], "turn": []}
    )
    usage: UsageTally = field(default_factory=UsageTally)
    _marks: dict[str, int] = field(default_factory=dict)

    def record(self, operation: str, seconds: float) -> None:
        self.latencies.setdefault(operation, []).append(seconds)

    def turn_done(self, seconds: float) -> None:
        self.turns += 1
        self.turn_times.append(time.monotonic())
        self.record("turn", seconds)

    def window(self, operation: str) -> list[float]:
        """Latencies recorded since the previous call for ``operation`` (for the live view)."""
        values = self.latencies.get(operation, [])
        start = self._marks.get(operation, 0)
        self._marks[operation] = len(values)
        return values[start:]

    def turns_per_second(self, over: float = 1.0) -> float:
        now = time.monotonic()
        recent = 0
        for t in reversed(self.turn_times):
            if now - t > over:
                break
            recent += 1
        return recent / over


class TimedSession(PostgresSession):
    """A PostgresSession that records how long ``get_items`` and ``add_items`` take."""

    def __init__(self, session_id: str, router: Router, stats: DemoStats) -> None:
        super().__init__(session_id, router)
        self.stats = stats

    async def get_items(
        self, limit: int | None = None, branch_id: str | None = None, *, wrapper: Any = None
    ) -> list[TResponseInputItem]:
        t0 = time.monotonic()
        items = await super().get_items(limit, branch_id, wrapper=wrapper)
        self.stats.record("get_items", time.monotonic() - t0)
        return items

    async def add_items(self, items: list[TResponseInputItem], *, wrapper: Any = None) -> None:
        t0 = time.monotonic()
        await super().add_items(items, wrapper=wrapper)
        self.stats.record("add_items", time.monotonic() - t0)
