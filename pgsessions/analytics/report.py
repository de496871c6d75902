"""Running the reports through the router: every statement is a read, so it runs on a
caught-up replica (bounded staleness: the router's last check) or, without one, the primary."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from ..sessions.schema import migrate_hint
from .queries import REPORTS, report_sql

if TYPE_CHECKING:
    from ..router import SessionRouter

_COLUMNS = {
    "by_day": ("day", "turns", "requests", "input_tokens", "output_tokens", "total_tokens",
               "sessions"),
    "by_model": ("model", "turns", "requests", "input_tokens", "output_tokens", "total_tokens",
                 "sessions"),
    "by_branch": ("branch", "turns", "requests", "input_tokens", "output_tokens",
                  "total_tokens", "sessions"),
    "by_tool": ("tool", "calls", "sessions"),
    "by_session": ("session_id", "turns", "requests", "input_tokens", "output_tokens",
                   "total_tokens"),
    "busiest": ("session_id", "turns", "requests", "total_tokens", "items_added"),
    "largest": ("session_id", "items", "updated_at", "item_bytes"),
}  # fmt: skip


@dataclass
class UsageReport:
    """The reports asked for over ``[since, until)``: name -> rows (dicts, JSON-ready)."""

    since: datetime
    until: datetime
    top: int
    reports: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    served_by: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "top": self.top,
            "reports": self.reports,
            "served_by": self.served_by,
        }


def columns(name: str) -> tuple[str, ...]:
    return _COLUMNS[name]


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


class _Where:
    """A router observer noting the role that served the last read."""

    def __init__(self) -> None:
        self.role = "?"

    def on_route(self, operation: str, role: str, reason: str) -> None:
        self.role = role

    def __getattr__(self, name: str) -> Any:
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)


def _params(since: datetime, until: datetime, top: int) -> dict[str, Any]:
    if until <= since:
        raise ValueError(f"the range is empty: until {until.isoformat()} <= since {since}")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be a positive int, got {top!r}")
    return {"since": since, "until": until, "top": top}


async def usage_report(
    router: SessionRouter,
    *,
    since: datetime,
    until: datetime,
    top: int = 10,
    reports: Sequence[str] = REPORTS,
) -> UsageReport:
    """Run ``reports`` (default all of :data:`REPORTS`) over ``[since, until)``."""
    params = _params(since, until, top)
    out = UsageReport(since, until, top)
    where = _Where()
    router.add_observer(where)
    try:
        for name in reports:
            query = report_sql(name, router.config.schema)
            with migrate_hint(router.config.schema):
                rows = await router.execute_read(f"usage_{name}", None, query, params)
            cols = columns(name)
            out.reports[name] = [
                {c: _plain(v) for c, v in zip(cols, row, strict=True)} for row in rows
            ]
            out.served_by[name] = where.role
    finally:
        router.remove_observer(where)
    return out


async def explain_report(
    router: SessionRouter, name: str, *, since: datetime, until: datetime, top: int = 10
) -> str:
    """``EXPLAIN`` of report ``name`` where the router sends it (the plan as text)."""
    query = "EXPLAIN " + report_sql(name, router.config.schema)
    with migrate_hint(router.config.schema):
        rows = await router.execute_read(f"usage_{name}", None, query, _params(since, until, top))
    return "\n".join(str(r[0]) for r in rows)
