"""The point-in-time recovery drill: its ledger check on plain data, real runs to an LSN and
to a time target (and a restore past the target, which must fail), and `cluster up --archive`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pgsessions.drills.ledger import WriteRecord
from pgsessions.drills.pitr import PitrOptions, check_restore, run_pitr
from tests.helpers import cluster_cli, cluster_state_dir


def w(session: str, n: int, start: float, end: float, ok: bool = True) -> WriteRecord:
    return WriteRecord(session, n, start, end, ok)


WRITES = [w("a", 1, 0.0, 0.1), w("a", 2, 0.2, 0.3), w("a", 3, 0.45, 0.6), w("a", 4, 0.7, 0.8)]
# target read between t=0.4 and t=0.5: batches 1-2 before, 3 in flight, 4 after


def test_check_restore_passes_on_exact_restore() -> None:
    for stored in (
        [(1, 0), (1, 1), (2, 0), (2, 1)],
        [(1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1)],
    ):
        r = check_restore(WRITES, {"a": stored}, 0.4, 0.5)
        assert r["passed"], r["failures"]
        assert (r["before_target"], r["after_target"], r["in_flight_at_target"]) == (2, 1, 1)


@pytest.mark.parametrize(
    ("stored", "failure"),
    [
        ([(1, 0), (1, 1)], "1 batches acknowledged before the target are missing"),
        ([(1, 0), (1, 1), (2, 0), (2, 1), (4, 0), (4, 1)], "written after the target"),
        ([(1, 0), (1, 1), (1, 1), (2, 0), (2, 1)], "duplicated items: 1"),
        ([(2, 0), (2, 1), (1, 0), (1, 1)], "reordered items: 1"),
        ([(1, 0), (1, 1), (2, 0), (2, 1), (3, 0)], "torn batches: 1"),
        ([(1, 0), (1, 1), (2, 0), (2, 1), (9, 0)], "never wrote: 1"),
    ],
)
def test_check_restore_names_what_is_wrong(stored: list[tuple[int, int]], failure: str) -> None:
    r = check_restore(WRITES, {"a": stored}, 0.4, 0.5)
    assert not r["passed"]
    assert any(failure in f for f in r["failures"]), r["failures"]


def test_check_restore_refuses_to_prove_nothing() -> None:
    r = check_restore(WRITES[:1], {"a": [(1, 0), (1, 1)]}, 0.4, 0.5)
    assert not r["passed"] and any("nothing was proven" in f for f in r["failures"])


def opts(**kw: object) -> PitrOptions:
    base: dict[str, object] = {"sessions": 6, "warmup": 1.0, "after": 1.0, "fsync": False}
    return PitrOptions(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.fault
@pytest.mark.parametrize("target", ["lsn", "time"])
async def test_pitr_drill_restores_exactly_to_the_target(target: str) -> None:
    r = await run_pitr(opts(target=target))
    assert r["passed"], r["failures"]
    c = r["check"]
    assert c["before_target"] > 20 and c["after_target"] > 20
    assert (c["lost"], c["leaked"], c["duplicated"], c["torn"]) == (0, 0, 0, 0)
    assert r["disaster_items_left_live"] == 0  # the disaster really happened
    assert r["restore"]["wal_files"] >= 1 and r["restore"]["wal_bytes_replayed"] > 0
    assert r["restore"]["seconds"] > 0
    stop = r["restore"]["stopped"]
    assert ("LSN" in stop) if target == "lsn" else ("before commit" in stop), stop
    assert r["router"]["mismatched"] == [] and r["router"]["write_ok"]
    assert r["router"]["migrations_applied"] == []


@pytest.mark.fault
async def test_pitr_drill_fails_when_the_restore_goes_past_the_target() -> None:
    r = await run_pitr(opts(break_target=True))
    assert not r["passed"]
    assert r["check"]["leaked"] > 0 and r["check"]["lost"] == 0
    assert any("written after the target were restored" in f for f in r["failures"])


def test_cluster_up_archive_takes_a_base_backup_and_archives_wal() -> None:
    state = cluster_state_dir("pgsessions-archive-")
    archive = state.parent / "archive"
    try:
        up = cluster_cli("up", "--dir", str(state), "--replicas", "1", "--archive", str(archive),
                         "--json", timeout=120)  # fmt: skip
        assert up.returncode == 0, up.stderr
        info = json.loads(up.stdout)["archive"]
        backup = Path(info["path"])
        assert backup.parent == archive / "base" and (backup / "backup_label").exists()
        assert "START WAL LOCATION: " + info["start_lsn"] in (backup / "backup_label").read_text()
        assert any(p.name.endswith(".backup") for p in (archive / "wal").iterdir())
        again = cluster_cli("up", "--dir", str(state), "--archive", str(archive), "--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["archive"]["path"] == info["path"]  # kept, not retaken
        other = cluster_cli("up", "--dir", str(state), "--archive", str(state.parent / "x"))
        assert other.returncode == 1 and "without archiving to" in other.stderr
    finally:
        cluster_cli("down", "--dir", str(state))
