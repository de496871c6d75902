"""The local cluster harness: real servers, real streaming replication, real faults."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from pgsessions.devcluster import ClusterError, LocalCluster
from tests.helpers import children_of, cluster_cli, cluster_state_dir, poll, processes_under


def _count(node, table: str) -> int:  # type: ignore[no-untyped-def]
    return int(node.execute(f"SELECT count(*) FROM {table}")[0][0])


def test_row_on_primary_reaches_both_replicas(cluster: LocalCluster) -> None:
    table = f"t_{uuid.uuid4().hex[:8]}"
    cluster.primary.execute(f"CREATE TABLE {table} (x int)")
    try:
        cluster.primary.execute(f"INSERT INTO {table} VALUES (42)")
        assert len(cluster.replicas) == 2
        for r in cluster.replicas:
            assert r.role() == "replica"
            assert poll(lambda r=r: _table_has(r, table, 42), timeout=10), r.name
    finally:
        cluster.primary.execute(f"DROP TABLE {table}")


def _table_has(node, table: str, value: int) -> bool:  # type: ignore[no-untyped-def]
    try:
        return bool(node.execute(f"SELECT 1 FROM {table} WHERE x = %s", (value,)))
    except psycopg.errors.UndefinedTable:
        return False


def test_paused_replica_sees_row_only_after_resume(cluster: LocalCluster) -> None:
    table = f"t_{uuid.uuid4().hex[:8]}"
    cluster.primary.execute(f"CREATE TABLE {table} (x int, pad text)")
    cluster.wait_caught_up()
    paused = cluster.replicas[0]
    cluster.pause_replay(paused)
    try:
        cluster.primary.execute(
            f"INSERT INTO {table} SELECT g, md5(g::text) FROM generate_series(1, 2000) g"
        )
        other = cluster.replicas[1]
        assert poll(lambda: _table_has(other, table, 7), timeout=10)
        assert not _table_has(paused, table, 7)
        row = {r["node"]: r for r in cluster.status()}[paused.name]
        assert row["lag_bytes"] is not None and row["lag_bytes"] > 0
        assert row["streaming"] is True
    finally:
        cluster.resume_replay(paused)
    assert poll(lambda: _table_has(paused, table, 7), timeout=10)
    cluster.wait_caught_up()
    row = {r["node"]: r for r in cluster.status()}[paused.name]
    assert row["lag_bytes"] == 0
    cluster.primary.execute(f"DROP TABLE {table}")


@pytest.mark.fault
def test_crash_promote_follow_and_rejoin(cluster_factory: Callable[..., LocalCluster]) -> None:
    c = cluster_factory(replicas=2)
    old, (new, other) = c.primary, c.replicas
    old.execute("CREATE TABLE t (x int)")
    old.execute("INSERT INTO t VALUES (1)")
    c.wait_caught_up()
    c.crash(old)
    assert old.role() == "down"
    c.promote(new)
    assert new.role() == "primary" and c.primary is new
    new.execute("INSERT INTO t VALUES (2)")
    c.follow(other, new)
    assert poll(lambda: _table_has(other, "t", 2), timeout=10)
    c.rejoin_as_replica(old)
    assert old.role() == "replica"
    new.execute("INSERT INTO t VALUES (3)")
    c.wait_caught_up()
    assert sorted(r[0] for r in old.execute("SELECT x FROM t")) == [1, 2, 3]
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        old.execute("INSERT INTO t VALUES (4)")


@pytest.mark.fault
def test_sync_commit_waits_for_a_standby(cluster_factory: Callable[..., LocalCluster]) -> None:
    c = cluster_factory(replicas=2, sync=True)
    p = c.primary
    states = {
        r[0]: r[1]
        for r in p.execute("SELECT application_name, sync_state FROM pg_stat_replication")
    }
    assert states == {"node2": "quorum", "node3": "quorum"}
    p.execute("CREATE TABLE t (x int)")
    for r in c.replicas:
        c.stop_node(r, "fast")
    done = threading.Event()
    errors: list[BaseException] = []

    def commit() -> None:
        try:
            p.execute("INSERT INTO t VALUES (1)", timeout=60)
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    worker = threading.Thread(target=commit, daemon=True)
    worker.start()
    # the commit is held until a standby confirms: its backend waits on SyncRep
    assert poll(
        lambda: bool(p.execute("SELECT 1 FROM pg_stat_activity WHERE wait_event = 'SyncRep'")),
        timeout=10,
    )
    assert not done.is_set()
    c.start_node(c.replicas[0])
    assert done.wait(30), "commit not acknowledged after a standby came back"
    assert not errors
    assert _table_has(c.replicas[0], "t", 1)


def test_two_clusters_at_once_and_stop_leaves_no_process(
    cluster_factory: Callable[..., LocalCluster], cluster: LocalCluster
) -> None:
    a = cluster_factory(replicas=1)
    b = cluster_factory(replicas=1)
    ports = [n.port for n in a.nodes + b.nodes + cluster.nodes]
    assert len(set(ports)) == len(ports)
    assert all(p < 32768 for p in ports)
    assert a.primary.execute("SELECT 1") == [(1,)] and b.primary.execute("SELECT 1") == [(1,)]
    postmasters = [n.pid() for n in a.nodes]
    assert all(postmasters) and processes_under(a.base_dir)
    a.stop()
    assert processes_under(a.base_dir) == []
    assert children_of([p for p in postmasters if p]) == []
    assert not a.base_dir.exists()
    assert b.primary.execute("SELECT 1") == [(1,)]


def test_no_binaries_gives_install_hint(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match="apt-get install postgresql"):
        LocalCluster(bindir=str(tmp_path)).start()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_directory_owned_by_someone_else(tmp_path: Path) -> None:
    d = tmp_path / "theirs"
    d.mkdir()
    os.chown(d, 65534, 65534)
    with pytest.raises(ClusterError, match="owned by"):
        LocalCluster(base_dir=d).start()


def test_unreachable_directory_is_named(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("servers run as the current user: every directory it owns is reachable")
    tmp_path.chmod(0o700)
    with pytest.raises(ClusterError, match="cannot reach"):
        LocalCluster(base_dir=tmp_path / "c").start()


def test_port_already_taken() -> None:
    base = Path(tempfile.mkdtemp(prefix="pgs-port-"))
    base.chmod(0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        with pytest.raises(ClusterError, match=f"port {taken} is already in use"):
            LocalCluster(replicas=0, ports=[taken], base_dir=base / "c").start()


def test_cli_up_status_down() -> None:
    d = cluster_state_dir("pgs-cli-")
    up = cluster_cli("up", "--dir", str(d), "--json", timeout=120)
    assert up.returncode == 0, up.stderr
    try:
        info = json.loads(up.stdout)
        assert len([info["primary"], *info["replicas"]]) == 3
        status = cluster_cli("status", "--dir", str(d), "--json", timeout=60)
        rows = json.loads(status.stdout)
        assert sorted(r["role"] for r in rows) == ["primary", "replica", "replica"]
        assert all(r["streaming"] for r in rows if r["role"] == "replica")
        table = cluster_cli("status", "--dir", str(d), timeout=60).stdout
        assert "primary" in table and "lag_bytes" in table
    finally:
        down = cluster_cli("down", "--dir", str(d), timeout=60)
    assert down.returncode == 0, down.stderr
    assert processes_under(d) == []
    assert not d.exists()


def _public_tmp(prefix: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix=prefix))
    d.chmod(0o755)
    return d


def _alive(pid: int) -> bool:
    """Running, not exited: an exited orphan stays a zombie until this container's PID 1
    (which is not an init) gets round to reaping it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_stale_directory_of_a_killed_run_is_cleaned() -> None:
    base = _public_tmp("pgs-stale-") / "c"
    # a run killed with SIGKILL leaves its servers running and its directory behind
    script = (
        "import os, signal; from pgsessions.devcluster import LocalCluster; "
        f"c = LocalCluster(replicas=1, base_dir={str(base)!r}, keep=True, fsync=False); "
        "c.start(); os.kill(os.getpid(), signal.SIGKILL)"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9
    leftovers = processes_under(base)
    assert leftovers, "the killed run should have left its servers running"
    c = LocalCluster(replicas=1, base_dir=base, fsync=False)
    try:
        c.start()
        assert [pid for pid in leftovers if _alive(pid)] == []
        assert c.primary.role() == "primary" and c.replicas[0].role() == "replica"
    finally:
        c.stop()
    assert processes_under(base) == []


def test_cluster_up_resumes_a_stopped_cluster_with_its_data() -> None:
    d = _public_tmp("pgs-resume-") / "state"
    cmd = [sys.executable, "-m", "pgsessions", "cluster"]
    subprocess.run([*cmd, "up", "--dir", str(d)], check=True, capture_output=True, timeout=120)
    try:
        c = LocalCluster.load(d)
        c.primary.execute("CREATE TABLE keepme (x int)")
        c.primary.execute("INSERT INTO keepme VALUES (7)")
        c.stop(delete=False)
        assert processes_under(d) == []
        up = subprocess.run(
            [*cmd, "up", "--dir", str(d), "--json"], capture_output=True, text=True, timeout=120
        )
        assert up.returncode == 0, up.stderr
        c = LocalCluster.load(d)
        assert c.primary.execute("SELECT x FROM keepme") == [(7,)]
        c.wait_caught_up()
        assert c.replicas[0].execute("SELECT x FROM keepme") == [(7,)]
    finally:
        subprocess.run([*cmd, "down", "--dir", str(d)], capture_output=True, timeout=60)
    assert processes_under(d) == []


def test_commands_with_local_use_the_local_cluster() -> None:
    """No --hosts and no PGSESSIONS_HOSTS but --local: migrate starts the local cluster and
    stops it again; status starts it and leaves it running (its state is what was asked for)."""
    d = _public_tmp("pgs-local-") / "cluster"
    env = {k: v for k, v in os.environ.items() if k != "PGSESSIONS_HOSTS"}
    env["PGSESSIONS_CLUSTER_DIR"] = str(d)

    def pgsessions(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pgsessions", *argv],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            stdin=subprocess.DEVNULL,
        )

    try:
        migrated = pgsessions("migrate", "--local")
        assert migrated.returncode == 0, migrated.stderr
        assert "started the local cluster" in migrated.stderr
        assert "0001" in migrated.stdout
        assert [p for p in processes_under(d) if _alive(p)] == []  # stopped again
        status = pgsessions("status", "--local", "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["primary"]
        assert [p for p in processes_under(d) if _alive(p)]  # left running
    finally:
        down = pgsessions("cluster", "down", "--dir", str(d))
    assert down.returncode == 0, down.stderr
    assert [p for p in processes_under(d) if _alive(p)] == []


def test_kept_cluster_outlives_its_process() -> None:
    """A ``keep=True`` cluster (what `cluster up` starts) is not stopped at interpreter exit,
    even while the object is still referenced then (it was, by chance of GC timing)."""
    base = _public_tmp("pgs-kept-") / "c"
    script = (
        "from pgsessions.devcluster import LocalCluster; "
        f"c = LocalCluster(replicas=1, base_dir={str(base)!r}, keep=True, fsync=False); "
        "c.start(); print(c.primary.port)"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    c = LocalCluster.load(base)
    try:
        assert c.is_running()
        with psycopg.connect(c.primary.conninfo, connect_timeout=5) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        c.stop(delete=True)
    assert processes_under(base) == []
