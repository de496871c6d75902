"""Backup tools behind one interface: how each spells a target, `cluster up --backup`, and the
point-in-time recovery drill restored by pgBackRest (full, diff, incr from a replica, then a
delta restore) and by Barman (a streaming backup from a replica). Real servers, real tools."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from pgsessions.devcluster import Node
from pgsessions.devcluster.backup_tools import parse_backup_arg
from pgsessions.devcluster.backups import TOOLS
from pgsessions.devcluster.barman import render_conf as barman_conf
from pgsessions.devcluster.errors import ClusterError
from pgsessions.devcluster.pgbackrest import render_conf as pgbackrest_conf
from pgsessions.devcluster.restored import parse_recovery_log
from pgsessions.devcluster.target import Target
from pgsessions.drills import pitr
from pgsessions.drills.pitr import PitrOptions, backup_plan, run_pitr
from tests.helpers import cluster_cli, cluster_state_dir

needs_pgbackrest = pytest.mark.skipif(
    shutil.which("pgbackrest") is None, reason="pgbackrest not installed (make backup-tools)"
)
needs_barman = pytest.mark.skipif(
    shutil.which("barman") is None, reason="barman not installed (make backup-tools)"
)


def test_a_target_is_spelled_the_same_way_by_every_tool() -> None:
    lsn = Target("lsn", "0/3000028")
    assert lsn.recovery_lines() == [
        "recovery_target_lsn = '0/3000028'",
        "recovery_target_inclusive = off",
    ]
    assert lsn.pgbackrest_args() == [
        "--type=lsn",
        "--target=0/3000028",
        "--target-exclusive",
        "--target-action=promote",
        "--target-timeline=current",
    ]
    assert lsn.barman_args() == ["--target-lsn=0/3000028", "--exclusive", "--target-action=promote"]
    at = Target("time", "2026-12-06 20:37:21.2+00")
    assert at.recovery_lines() == ["recovery_target_time = '2026-12-06 20:37:21.2+00'"]
    assert (
        "--type=time" in at.pgbackrest_args() and "--target-exclusive" not in at.pgbackrest_args()
    )
    assert at.barman_args()[0] == "--target-time=2026-12-06 20:37:21.2+00"
    with pytest.raises(ValueError):
        Target("xid", "42")  # type: ignore[arg-type]


def test_backup_arg_names_a_tool_and_a_repository(tmp_path: Path) -> None:
    assert parse_backup_arg("pgbackrest", tmp_path) == ("pgbackrest", tmp_path / "pgbackrest")
    assert parse_backup_arg(f"barman={tmp_path}/b", Path("/x")) == ("barman", tmp_path / "b")
    for bad in ("cp", "wal-g=/x", "barman="):
        with pytest.raises(ClusterError):
            parse_backup_arg(bad, tmp_path)


def test_pgbackrest_conf_names_the_primary_first_and_backs_up_from_a_standby(
    tmp_path: Path,
) -> None:
    nodes = [Node("node1", 5001, tmp_path), Node("node2", 5002, tmp_path)]
    conf = pgbackrest_conf(tmp_path, nodes).splitlines()
    for line in ("archive-async=y", "backup-standby=y", f"repo1-path={tmp_path / 'repo'}",
                 f"spool-path={tmp_path / 'spool'}", "[pgsessions]", "pg1-port=5001",
                 f"pg1-path={tmp_path / 'node1' / 'data'}", "pg2-port=5002",
                 f"pg2-socket-path={tmp_path / 'sock'}"):  # fmt: skip
        assert line in conf, line
    assert conf.index("pg1-port=5001") < conf.index("pg2-port=5002")


def test_barman_conf_streams_from_the_replica_and_switches_wal_on_the_primary(
    tmp_path: Path,
) -> None:
    primary, replica = Node("node1", 5001, tmp_path), Node("node2", 5002, tmp_path)
    conf = barman_conf(tmp_path, primary, replica, Path("/pg/bin"))
    assert "backup_method = postgres" in conf and "path_prefix = /pg/bin" in conf
    assert "conninfo = " + replica.conninfo_for("postgres") in conf
    assert "primary_conninfo = " + primary.conninfo_for("postgres") in conf
    # no replica: from the primary, and no primary_conninfo
    assert "primary_conninfo" not in barman_conf(tmp_path, primary, primary, Path("/pg/bin"))


def test_the_drill_takes_every_kind_of_backup_a_tool_has() -> None:
    assert pitr.TOOLS == TOOLS  # the drill's --tool choices, kept without importing devcluster
    assert backup_plan("pgbackrest") == ["full", "diff", "incr"]
    assert backup_plan("barman") == backup_plan("cp") == ["full"]


def test_recovery_log_gives_files_stop_and_redo_end() -> None:
    log = (
        'LOG:  restored log file "000000010000000000000005" from archive\n'
        'LOG:  restored log file "000000010000000000000006" from archive\n'
        'LOG:  recovery stopping before WAL location (LSN) "0/6000100"\n'
        "LOG:  redo done at 0/60000D8 system usage: CPU: user: 0.00 s\n"
    )
    assert parse_recovery_log(log) == (
        2,
        'recovery stopping before WAL location (LSN) "0/6000100"',
        "0/60000D8",
    )
    assert parse_recovery_log("") == (0, None, None)


def opts(**kw: object) -> PitrOptions:
    base: dict[str, object] = {"sessions": 6, "warmup": 0.5, "after": 1.0, "fsync": False}
    return PitrOptions(**{**base, **kw})  # type: ignore[arg-type]


@needs_pgbackrest
@pytest.mark.fault
async def test_pgbackrest_restores_exactly_to_the_target_from_replica_backups() -> None:
    r = await run_pitr(opts(tool="pgbackrest"))
    assert r["passed"], r["failures"]
    assert [b["kind"] for b in r["backups"]] == ["full", "diff", "incr"]
    assert {b["source"] for b in r["backups"]} == {"node2"}  # from a replica
    full, diff, incr = r["backups"]
    assert diff["stored_bytes"] < full["stored_bytes"] and incr["stored_bytes"] < full["bytes"]
    assert r["base_backup"]["label"] == incr["label"]  # the restore used the newest
    c = r["check"]
    assert c["before_target"] > 20 and c["after_target"] > 20
    assert (c["lost"], c["leaked"], c["duplicated"], c["torn"]) == (0, 0, 0, 0)
    assert "LSN" in r["restore"]["stopped"] and r["restore"]["wal_bytes_replayed"] > 0
    assert r["router"]["mismatched"] == [] and r["router"]["migrations_applied"] == []
    assert r["delta_restore"]["passed"] and r["delta_restore"]["seconds"] > 0


@needs_barman
@pytest.mark.fault
async def test_barman_restores_exactly_to_a_time_target_from_a_replica_backup() -> None:
    r = await run_pitr(opts(tool="barman", target="time"))
    assert r["passed"], r["failures"]
    assert [(b["kind"], b["source"]) for b in r["backups"]] == [("full", "node2")]
    c = r["check"]
    assert c["before_target"] > 20 and c["after_target"] > 20
    assert (c["lost"], c["leaked"], c["duplicated"], c["torn"]) == (0, 0, 0, 0)
    assert "before commit" in r["restore"]["stopped"]
    assert r["router"]["write_ok"] and r["delta_restore"] is None


@needs_pgbackrest
def test_cluster_up_backup_pgbackrest_checks_the_stanza_and_backs_up_a_replica() -> None:
    state = cluster_state_dir("pgsessions-pgbackrest-")
    repo = state.parent / "repo"
    try:
        up = cluster_cli("up", "--dir", str(state), "--replicas", "1",
                         "--backup", f"pgbackrest={repo}", "--json", timeout=180)  # fmt: skip
        assert up.returncode == 0, up.stderr
        assert "first full backup" in up.stderr  # progress on the way
        info = json.loads(up.stdout)
        backup = info["backup"]
        assert backup["tool"] == "pgbackrest" and backup["dir"] == str(repo)
        assert backup["full"]["kind"] == "full" and backup["full"]["source"] == "node2"
        out = subprocess.run(
            ["runuser", "-u", "postgres", "--", "pgbackrest", f"--config={repo}/pgbackrest.conf",
             "--stanza=pgsessions", "info", "--output=json"],
            capture_output=True, text=True, check=True, cwd="/",
        ).stdout  # fmt: skip
        stanza = json.loads(out)[0]
        assert stanza["status"]["code"] == 0, stanza["status"]
        assert [b["label"] for b in stanza["backup"]] == [backup["full"]["label"]]
        assert stanza["archive"][0]["max"]  # WAL arrived through archive-push
        again = cluster_cli("up", "--dir", str(state), "--backup", f"pgbackrest={repo}", "--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["backup"]["full"] is None  # running: no new backup
        other = cluster_cli("up", "--dir", str(state), "--backup", "barman")
        assert other.returncode == 1 and "runs without barman" in other.stderr
    finally:
        cluster_cli("down", "--dir", str(state))
        shutil.rmtree(state.parent, ignore_errors=True)


@needs_barman
def test_cluster_up_backup_barman_checks_the_server_and_backs_up_a_replica() -> None:
    state = cluster_state_dir("pgsessions-barman-")
    try:
        up = cluster_cli("up", "--dir", str(state), "--replicas", "1",
                         "--backup", "barman", "--json", timeout=180)  # fmt: skip
        assert up.returncode == 0, up.stderr
        backup = json.loads(up.stdout)["backup"]
        home = state.parent / "barman"  # the default: next to the state directory
        assert backup["tool"] == "barman" and backup["dir"] == str(home)
        assert backup["full"]["source"] == "node2"
        out = subprocess.run(
            ["runuser", "-u", "postgres", "--", "barman", "-c", str(home / "barman.conf"),
             "-f", "json", "list-backups", "pgsessions"],
            capture_output=True, text=True, check=True, cwd="/",
        ).stdout  # fmt: skip
        listed = json.loads(out)["pgsessions"]
        assert [(b["backup_id"], b["status"]) for b in listed] == [
            (backup["full"]["label"], "DONE")
        ]
    finally:
        cluster_cli("down", "--dir", str(state))
        shutil.rmtree(state.parent, ignore_errors=True)
