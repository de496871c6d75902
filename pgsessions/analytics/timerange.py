"""Time ranges on the command line: ``30d``, ``12h``, ``2026-11-01``, ``2026-11-01T12:00``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from ..router.settings import non_negative

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: the longest duration taken: a century (a timedelta or a date past it overflows)
_LONGEST = non_negative(100 * 365 * 86400.0)


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``12h``, ``30d``, ``2w`` as a timedelta (ValueError naming ``text``)."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 15m, 12h, 30d, 2w)")
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    _LONGEST.check(f"the duration {text!r} in seconds", seconds)
    return timedelta(seconds=seconds)


def parse_instant(text: str, now: datetime | None = None) -> datetime:
    """A duration ago (``7d``), ``now``, or an ISO date/time (UTC unless it has an offset)."""
    now = now or datetime.now(UTC)
    if text.strip().lower() == "now":
        return now
    if _DURATION.match(text):
        return now - parse_duration(text)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (use e.g. 7d for seven days ago, 2026-11-01, "
            "2026-11-01T12:00:00+00:00, or now)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
