"""WAL archiving health, as the health check reads it from a primary's ``pg_stat_archiver``.

The check asks a primary with ``archive_mode`` on for one JSON object: the archiver's counts,
the age of its last archived segment, the segment being written and the last one archived.
The number of finished segments not yet archived comes from the names: on an idle primary
the last archived segment gets old while nothing waits (no alert), while a failing
``archive_command`` leaves segments waiting and the failed count rising.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .lsn import parse_lsn

#: one column of the health check: NULL on a standby or with archiving off
ARCHIVER_COLUMN = """CASE WHEN pg_is_in_recovery() OR current_setting('archive_mode') = 'off'
            THEN NULL
            ELSE (SELECT json_build_object(
                    'archived', archived_count, 'failed', failed_count,
                    'age', extract(epoch FROM clock_timestamp() - last_archived_time)::float8,
                    'last', last_archived_wal,
                    'lsn', pg_current_wal_lsn()::text,
                    'current', pg_walfile_name(pg_current_wal_lsn()),
                    'segment_size', pg_size_bytes(current_setting('wal_segment_size')))
                  FROM pg_stat_archiver) END"""


@dataclass(frozen=True)
class ArchiverStats:
    """A primary's archiver: segments archived and failed (since the statistics were reset),
    seconds since the last success (None: never), finished segments still waiting."""

    archived_count: int
    failed_count: int
    last_archived_age: float | None
    pending_segments: int | None


def segment_number(name: str | None, segment_size: int) -> tuple[int, int] | None:
    """``(timeline, segment number)`` of a WAL segment file name (a ``.backup`` or
    ``.partial`` file counts as its segment); None for a ``.history`` file or no name."""
    if name is None or len(name) < 24:
        return None
    head = name[:24]
    try:
        tli, log, seg = int(head[:8], 16), int(head[8:16], 16), int(head[16:], 16)
    except ValueError:
        return None
    if len(name) > 24 and not name[24:].startswith("."):
        return None
    return tli, log * (0x1_0000_0000 // segment_size) + seg


def pending_segments(
    lsn: int, timeline: int | None, last: str | None, segment_size: int
) -> int | None:
    """Finished segments before the one that holds ``lsn`` (the write position) that come
    after ``last`` (the last archived); None when it cannot be told (nothing archived yet, a
    history file, another timeline). From the LSN, not ``pg_walfile_name``: right after a
    switch that names the segment before the boundary, which would hide one waiting."""
    done = segment_number(last, segment_size)
    if segment_size <= 0 or done is None or timeline is None or done[0] != timeline:
        return None
    return max(0, lsn // segment_size - 1 - done[1])


def parse_archiver(value: Any) -> ArchiverStats | None:
    """The :class:`ArchiverStats` of the health check's archiver column (None stays None)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"archiver stats as a JSON object, got {type(value).__name__}")
    size = int(value.get("segment_size") or 0)
    age = value.get("age")
    current = segment_number(value.get("current"), size) if size > 0 else None
    lsn = value.get("lsn")
    pending = None
    if current is not None and isinstance(lsn, str):
        pending = pending_segments(parse_lsn(lsn), current[0], value.get("last"), size)
    return ArchiverStats(
        archived_count=int(value["archived"]),
        failed_count=int(value["failed"]),
        last_archived_age=float(age) if age is not None else None,
        pending_segments=pending,
    )
