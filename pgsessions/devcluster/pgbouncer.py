"""PgBouncer in front of each node of a LocalCluster (transaction pooling by default).

Each bouncer lives in ``<cluster dir>/pgbouncer/<node>/`` (config, auth file, log, pid file),
listens on a loopback port of its own below 32768 and runs as the server user. Its state is
kept in ``<cluster dir>/pgbouncer.json`` so that `pgsessions cluster status|down` find it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psycopg

from .binaries import chown_to_server_user, run_as_server_user
from .cluster import LocalCluster, wait_for
from .errors import ClusterError
from .node import loopback_dsn
from .ports import pick_free_port

STATE_FILE = "pgbouncer.json"
PoolMode = Literal["session", "transaction", "statement"]

INSTALL_HINT = (
    "install PgBouncer (Debian/Ubuntu: `apt-get install pgbouncer`; `make pgbouncer` does it "
    "for you), or set PGSESSIONS_PGBOUNCER to its path"
)


def find_pgbouncer() -> str:
    """The pgbouncer executable: $PGSESSIONS_PGBOUNCER, the PATH, or /usr/sbin."""
    explicit = os.environ.get("PGSESSIONS_PGBOUNCER")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise ClusterError(f"PGSESSIONS_PGBOUNCER={explicit} is not executable")
        return explicit
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/sbin")
    if not found:
        raise ClusterError("pgbouncer not found; " + INSTALL_HINT)
    return found


@dataclass
class Bouncer:
    """One PgBouncer in front of one node."""

    node: str
    port: int
    target_port: int
    dir: Path
    pool_mode: str = "transaction"

    @property
    def dsn(self) -> str:
        return loopback_dsn(self.port)

    @property
    def log_path(self) -> Path:
        return self.dir / "pgbouncer.log"

    def pid(self) -> int | None:
        try:
            pid = int((self.dir / "pgbouncer.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if str(self.dir).encode() in cmd else None

    def is_running(self) -> bool:
        return self.pid() is not None

    def accepts(self) -> bool:
        try:
            with psycopg.connect(self.dsn, connect_timeout=2, autocommit=True) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False


def _config(b: Bouncer, pool_size: int) -> str:
    return "\n".join(
        [
            "[databases]",
            f"* = host=127.0.0.1 port={b.target_port}",
            "",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {b.port}",
            "unix_socket_dir =",
            "auth_type = trust",
            f"auth_file = {b.dir / 'userlist.txt'}",
            f"pool_mode = {b.pool_mode}",
            "max_client_conn = 2000",
            f"default_pool_size = {pool_size}",
            "min_pool_size = 0",
            "reserve_pool_size = 0",
            # psycopg sends no startup parameters PgBouncer must ignore; pgsessions' connect
            # options are refused (1.18 does not support them) and the router drops them
            "ignore_startup_parameters = extra_float_digits",
            "server_check_delay = 0",
            "server_login_retry = 1",
            "log_connections = 0",
            "log_disconnections = 0",
            f"logfile = {b.log_path}",
            f"pidfile = {b.dir / 'pgbouncer.pid'}",
            "",
        ]
    )


def start_bouncers(
    cluster: LocalCluster, *, pool_mode: PoolMode = "transaction", pool_size: int = 20
) -> list[Bouncer]:
    """Start one PgBouncer per node (primary first, like ``cluster.dsns()``); wait until each
    accepts connections. Their state is saved beside the cluster's."""
    exe = find_pgbouncer()
    root = cluster.base_dir / "pgbouncer"
    root.mkdir(exist_ok=True)
    root.chmod(0o755)
    chown_to_server_user(root)
    used = {n.port for n in cluster.nodes} | {b.port for b in load_bouncers(cluster.base_dir)}
    started: list[Bouncer] = []
    try:
        for node in [cluster.primary, *cluster.replicas]:
            port = pick_free_port(used)
            used.add(port)
            d = root / f"{node.name}-{port}"
            d.mkdir()
            d.chmod(0o700)
            chown_to_server_user(d)
            b = Bouncer(node=node.name, port=port, target_port=node.port, dir=d)
            b.pool_mode = pool_mode
            for name, text in (
                ("userlist.txt", '"postgres" ""\n'),
                ("pgbouncer.ini", _config(b, pool_size)),
            ):
                (d / name).write_text(text)
                chown_to_server_user(d / name)
            run_as_server_user([exe, "-d", "-q", str(d / "pgbouncer.ini")], timeout=30)
            started.append(b)
            _save(cluster.base_dir, [*load_bouncers(cluster.base_dir), b])
            try:
                wait_for(b.accepts, 20, f"pgbouncer for {node.name} on port {port}")
            except ClusterError as exc:
                tail = b.log_path.read_text()[-1500:] if b.log_path.exists() else ""
                raise ClusterError(f"{exc}\n{tail}") from None
    except BaseException:
        stop_bouncers(cluster.base_dir, only=started)
        raise
    return started


def load_bouncers(base_dir: Path) -> list[Bouncer]:
    """The bouncers recorded in ``base_dir`` (empty when there are none)."""
    try:
        state = json.loads((base_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return []
    return [
        Bouncer(
            node=b["node"],
            port=b["port"],
            target_port=b["target_port"],
            dir=Path(b["dir"]),
            pool_mode=b.get("pool_mode", "transaction"),
        )
        for b in state.get("bouncers", [])
    ]


def _save(base_dir: Path, bouncers: list[Bouncer]) -> None:
    state = {
        "bouncers": [
            {
                "node": b.node,
                "port": b.port,
                "target_port": b.target_port,
                "dir": str(b.dir),
                "pool_mode": b.pool_mode,
            }
            for b in bouncers
        ]
    }
    path = base_dir / STATE_FILE
    if not bouncers:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


def stop_bouncers(base_dir: Path, *, only: list[Bouncer] | None = None) -> int:
    """Stop the bouncers recorded in ``base_dir`` (or just ``only``); returns how many ran.

    Each gets SIGINT (no new clients, shut down), then SIGKILL after 5 s.
    """
    recorded = load_bouncers(base_dir)
    targets = recorded if only is None else only
    stopped = 0
    for b in targets:
        pid = b.pid()
        if pid is None:
            continue
        stopped += 1
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 5
        while b.pid() is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        if b.pid() is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    gone = {b.dir for b in targets}
    _save(base_dir, [b for b in recorded if b.dir not in gone])
    for b in targets:
        shutil.rmtree(b.dir, ignore_errors=True)
    return stopped
