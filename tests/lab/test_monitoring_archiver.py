"""WAL archiving health as metrics: the arithmetic on segment names, and a real primary whose
archive_command fails and then recovers, seen through /metrics' collector."""

from __future__ import annotations

import shlex
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pgsessions.devcluster import LocalCluster
from pgsessions.devcluster.binaries import chown_to_server_user
from pgsessions.monitoring import instrument
from pgsessions.router import RouterConfig, SessionRouter
from pgsessions.router.archiver import (
    ArchiverStats,
    parse_archiver,
    pending_segments,
    segment_number,
)
from tests.helpers import apoll

SEG = 16 * 2**20


def test_segment_names_count_across_log_boundaries() -> None:
    assert segment_number("000000010000000000000003", SEG) == (1, 3)
    assert segment_number("0000000200000001000000FF", SEG) == (2, 256 + 255)
    assert segment_number("000000010000000000000003.00000028.backup", SEG) == (1, 3)
    for name in (None, "00000002.history", "00000001000000000000000G", "x" * 30):
        assert segment_number(name, SEG) is None


def test_pending_segments_are_the_finished_ones_not_archived() -> None:
    # writing in segment 5: 3 and 4 are finished and wait once 2 is the last archived
    assert pending_segments(5 * SEG + 100, 1, "000000010000000000000002", SEG) == 2
    assert pending_segments(5 * SEG + 100, 1, "000000010000000000000004", SEG) == 0
    # right after a switch to segment 3 (LSN 0/3000000), segment 2 waits
    assert pending_segments(3 * SEG, 1, "000000010000000000000001", SEG) == 1
    # an idle primary: the current segment follows the last archived, nothing waits
    assert pending_segments(256 * SEG + 8, 1, "0000000100000000000000FF", SEG) == 0
    assert pending_segments(5 * SEG, 1, None, SEG) is None  # never archived
    assert pending_segments(5 * SEG, 2, "000000010000000000000004", SEG) is None


def test_archiver_column_parses_into_stats() -> None:
    value = {"archived": 7, "failed": 2, "age": 12.5, "last": "000000010000000000000004",
             "lsn": "0/7000100", "current": "000000010000000000000007",
             "segment_size": SEG}  # fmt: skip
    assert parse_archiver(value) == ArchiverStats(7, 2, 12.5, 2)
    assert parse_archiver(None) is None
    assert parse_archiver({**value, "age": None, "last": None}) == ArchiverStats(7, 2, None, None)
    with pytest.raises(ValueError):
        parse_archiver("[]")


@pytest.fixture(scope="module")
def archiving() -> Iterator[tuple[LocalCluster, Path]]:
    """A primary whose archive_command fails while ``DIR/fail`` exists."""
    base = Path(tempfile.mkdtemp(prefix="pgsessions-archiver-"))
    base.chmod(0o755)
    wal = base / "wal"
    wal.mkdir()
    chown_to_server_user(wal)
    q = shlex.quote
    command = f"test ! -f {q(str(base / 'fail'))} && cp %p {q(str(wal))}/%f"
    settings = {"archive_mode": "on", "archive_command": "'" + command.replace("'", "''") + "'"}
    cluster = LocalCluster(replicas=0, fsync=False, base_dir=base / "cluster", settings=settings)
    cluster.start()
    try:
        yield cluster, base
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def archive_samples(registry: CollectorRegistry) -> dict[str, float]:
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("pgsessions_archive_"):
                out[s.name] = s.value
    return out


def finish_segment(cluster: LocalCluster) -> None:
    cluster.primary.execute("CREATE TABLE IF NOT EXISTS t (x int)")
    cluster.primary.execute("INSERT INTO t VALUES (1)")
    cluster.primary.execute("SELECT pg_switch_wal()")


async def until(
    registry: CollectorRegistry, pred: Callable[[dict[str, float]], bool], what: str, within: float
) -> dict[str, float]:
    """The archive samples once ``pred`` holds of them (polled, with a deadline)."""
    seen: dict[str, float] = {}

    async def check() -> bool:
        seen.clear()
        seen.update(archive_samples(registry))
        return pred(seen)

    assert await apoll(check, within), f"timed out waiting for {what}: {seen}"
    return seen


def healthy(m: dict[str, float]) -> bool:
    archived = m.get("pgsessions_archive_archived_total", 0) >= 1
    return archived and m.get("pgsessions_archive_pending_segments") == 0


def failing(m: dict[str, float]) -> bool:
    failed = m.get("pgsessions_archive_failed_total", 0) >= 1
    return failed and m.get("pgsessions_archive_pending_segments", 0) >= 1


async def test_a_failing_archive_command_shows_in_the_metrics(
    archiving: tuple[LocalCluster, Path],
) -> None:
    cluster, base = archiving
    registry = CollectorRegistry()
    config = RouterConfig(hosts=[cluster.primary.dsn], check_interval=0.2, name="archiver")
    async with SessionRouter(config) as router:
        instrument(router, registry)
        finish_segment(cluster)
        m = await until(registry, healthy, "a segment archived, none pending", 30)
        assert m["pgsessions_archive_failed_total"] == 0
        assert 0 <= m["pgsessions_archive_last_archived_age_seconds"] < 30
        (base / "fail").write_text("")
        finish_segment(cluster)
        await until(registry, failing, "failures counted and a segment pending", 30)
        (base / "fail").unlink()
        finish_segment(cluster)  # a new segment wakes the archiver, which retries the old one
        m = await until(registry, healthy, "archiving to catch up again", 60)
        assert m["pgsessions_archive_failed_total"] >= 1  # a counter: failures stay counted
    text = generate_latest(registry).decode()
    assert "password" not in text and "postgresql://" not in text
