"""Running the reports through the router: every statement is a read, so it runs on a
caught-up replica (bounded staleness: the router's last check) or, without one, the primary."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from ..router.protocol import owned_buckets
from ..router.settings import INT64_MAX, count
from ..sessions.schema import migrate_hint
from ..sessions.sql.reports import REPORTS, report_sql

if TYPE_CHECKING:
    from ..router.protocol import Router

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


#: per report: the columns that identify a row (others are summed across clusters) and the
#: order rows come in, as (column, descending) pairs
_KEYS: dict[str, tuple[tuple[str, ...], tuple[tuple[str, bool], ...]]] = {
    "by_day": (("day",), (("day", False),)),
    "by_model": (("model",), (("total_tokens", True), ("model", False))),
    # branch ids repeat across conversations: a branch row sums over clusters like a model's
    "by_branch": (("branch",), (("total_tokens", True), ("branch", False))),
    "by_tool": (("tool",), (("calls", True), ("tool", False))),
    "by_session": (("session_id",), (("total_tokens", True), ("session_id", False))),
    "busiest": (("session_id",), (("turns", True), ("requests", True), ("session_id", False))),
    "largest": (("session_id",), (("items", True), ("session_id", False))),
}
_RANKED = ("by_session", "busiest", "largest", "by_tool", "by_branch")


def combine(
    name: str, per_cluster: Sequence[list[dict[str, Any]]], top: int
) -> list[dict[str, Any]]:
    """One report from each cluster's rows: rows of the same key summed (a conversation
    lives on one cluster, so ``sessions`` counts add up), in the report's order, rankings
    cut to ``top``."""
    if len(per_cluster) == 1:
        return per_cluster[0]
    keys, order = _KEYS[name]
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for rows in per_cluster:
        for row in rows:
            k = tuple(row[c] for c in keys)
            if k not in merged:
                merged[k] = dict(row)
                continue
            acc = merged[k]
            for col, value in row.items():
                if col not in keys and isinstance(value, int) and not isinstance(value, bool):
                    acc[col] = (acc[col] or 0) + value
    out = list(merged.values())
    for col, desc in reversed(order):  # stable sorts, least significant first
        out.sort(key=lambda r: r[col], reverse=desc)
    return out[:top] if name in _RANKED else out


def _params(since: datetime, until: datetime, top: int) -> dict[str, Any]:
    if until <= since:
        raise ValueError(f"the range is empty: until {until.isoformat()} <= since {since}")
    count(1, INT64_MAX).check("top", top)
    return {"since": since, "until": until, "top": top}


async def usage_report(
    router: Router,
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
            cols = columns(name)
            per_cluster = []
            for cluster in router.clusters():
                owned = owned_buckets(router, cluster)
                query = report_sql(name, router.config.schema, owned is not None)
                args = params if owned is None else {**params, "owned": owned}
                with migrate_hint(router.config.schema):
                    rows = await cluster.execute_read(f"usage_{name}", None, query, args)
                per_cluster.append(
                    [{c: _plain(v) for c, v in zip(cols, row, strict=True)} for row in rows]
                )
            out.reports[name] = combine(name, per_cluster, top)
            out.served_by[name] = where.role
    finally:
        router.remove_observer(where)
    return out


async def explain_report(
    router: Router, name: str, *, since: datetime, until: datetime, top: int = 10
) -> str:
    """``EXPLAIN`` of report ``name`` where the router sends it (the plan as text)."""
    query = "EXPLAIN " + report_sql(name, router.config.schema)
    with migrate_hint(router.config.schema):
        rows = await router.execute_read(f"usage_{name}", None, query, _params(since, until, top))
    return "\n".join(str(r[0]) for r in rows)
