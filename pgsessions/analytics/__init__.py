"""Usage analytics on replicas: tokens and requests by day, model and session, the largest
conversations and the busiest sessions (``pgsessions usage``, :func:`usage_report`)."""

from __future__ import annotations

from ..sessions.sql.reports import REPORTS, report_sql
from .report import UsageReport, explain_report, usage_report
from .timerange import parse_duration, parse_instant

__all__ = [
    "REPORTS",
    "UsageReport",
    "explain_report",
    "parse_duration",
    "parse_instant",
    "report_sql",
    "usage_report",
]
