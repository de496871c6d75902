"""LocalCluster: a real primary and N streaming replicas on loopback, started with pg_ctl."""

from __future__ import annotations

import atexit
import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import psycopg

from .binaries import chown_to_server_user, find_bindir, run_as_server_user, server_user
from .errors import ClusterError
from .node import DBNAME, Node
from .ports import pick_free_port, port_is_free
from .tls import HBA, TLS_DIR, ClusterTls

STATE_FILE = "cluster.json"
NODE_CONF = "pgsessions_node.conf"
MANAGED_KEYS = (
    "primary_conninfo",
    "primary_slot_name",
    "synchronous_standby_names",
    "recovery_min_apply_delay",
)
StopMode = Literal["fast", "immediate", "smart"]

_live: weakref.WeakSet[LocalCluster] = weakref.WeakSet()
_live_lock = threading.Lock()


def _stop_live_clusters() -> None:
    for cluster in list(_live):
        try:
            cluster.stop()
        except Exception:  # best effort at interpreter exit
            pass


atexit.register(_stop_live_clusters)


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll ``condition`` until it holds; raise ClusterError naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            if condition():
                return
        except (psycopg.Error, OSError) as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc})" if last_exc else ""
            raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


class LocalCluster:
    """A primary and ``replicas`` streaming replicas in a directory of their own.

    ``sync=True`` makes the primary wait for ``ANY 1`` replica on each commit. Servers run as
    the ``postgres`` OS user when we are root. ``keep=False`` deletes the directory on stop.
    ``tls=True`` makes a CA and a certificate per node and accepts only TLS connections with
    a SCRAM password (``password``, or a random one) for every role, replication included:
    clients use :meth:`client_env` (``PGPASSFILE``) and DSNs with ``sslmode=verify-full``.
    Every operation that changes the cluster waits for its effect with a deadline.
    """

    def __init__(
        self,
        replicas: int = 2,
        *,
        sync: bool = False,
        base_dir: str | os.PathLike[str] | None = None,
        keep: bool = False,
        fsync: bool = True,
        ports: Iterable[int] | None = None,
        bindir: str | None = None,
        settings: dict[str, str] | None = None,
        tls: bool = False,
        password: str | None = None,
    ) -> None:
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        if password is not None and not tls:
            raise ValueError("password: only a TLS cluster (tls=True) uses passwords")
        self.replica_count = replicas
        self.sync = sync
        self.keep = keep
        self.fsync = fsync
        self.settings = dict(settings or {})
        self._bindir_arg = bindir
        self._requested_ports = list(ports) if ports is not None else None
        if self._requested_ports is not None and len(self._requested_ports) != replicas + 1:
            raise ValueError(f"ports: need {replicas + 1} ports (primary + replicas)")
        self._base_dir_arg = Path(base_dir).resolve() if base_dir is not None else None
        self.base_dir: Path = self._base_dir_arg or Path()
        self.nodes: list[Node] = []
        self._primary_name: str | None = None
        self._started = False
        self._bindir: Path | None = None
        self._want_tls = tls
        self._password = password
        #: the CA, certificates and passfile of a TLS cluster (None: trust auth, no TLS)
        self.tls: ClusterTls | None = None

    # ---------------------------------------------------------------- public views
    @property
    def bindir(self) -> Path:
        if self._bindir is None:
            self._bindir = find_bindir(self._bindir_arg)
        return self._bindir

    @property
    def primary(self) -> Node:
        """The node this cluster last made primary."""
        for n in self.nodes:
            if n.name == self._primary_name:
                return n
        raise ClusterError("the cluster has no primary (not started?)")

    @property
    def replicas(self) -> list[Node]:
        return [n for n in self.nodes if n.name != self._primary_name]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node named {name!r} (have {[n.name for n in self.nodes]})")

    def dsns(self) -> list[str]:
        """DSNs of every node, primary first."""
        return [self.primary.dsn] + [n.dsn for n in self.replicas]

    def client_env(self) -> dict[str, str]:
        """Environment a client of :meth:`dsns` needs: ``PGPASSFILE`` of a TLS cluster."""
        return {"PGPASSFILE": str(self.tls.passfile)} if self.tls is not None else {}

    def __repr__(self) -> str:
        return (
            f"LocalCluster(dir={str(self.base_dir)!r}, primary={self._primary_name!r}, "
            f"nodes={[f'{n.name}:{n.port}' for n in self.nodes]})"
        )

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> LocalCluster:
        """Create and start the cluster; returns self. Takes about two seconds."""
        if self._started:
            return self
        bindir = self.bindir
        self._prepare_dir()
        if not self.keep:  # a kept cluster outlives this process (`cluster up`)
            with _live_lock:
                _live.add(self)
        try:
            used: set[int] = set()
            names = ["node1"] + [f"node{i + 2}" for i in range(self.replica_count)]
            if self._want_tls:
                self.tls = ClusterTls.create(
                    self.base_dir / TLS_DIR, names, user="postgres", password=self._password
                )
                self._password = None
            for i, name in enumerate(names):
                port = self._port_for(i, used)
                used.add(port)
                self.nodes.append(Node(name=name, port=port, base_dir=self.base_dir, tls=self.tls))
            primary = self.nodes[0]
            self._primary_name = primary.name
            self._init_primary(primary, bindir)
            for replica in self.nodes[1:]:
                self._create_replica(replica, primary)
            for replica in self.nodes[1:]:
                self._wait_streaming(replica, primary)
            if self.sync and self.replicas:
                self._set_sync_standbys(primary, [r.name for r in self.replicas])
            self._started = True
            self._save_state()
        except BaseException:
            self.stop(delete=not self.keep)
            raise
        return self

    def stop(self, *, delete: bool | None = None) -> None:
        """Stop every server (fast, then immediate) and delete the directory unless kept."""
        for node in self.nodes:
            if node.is_running():
                try:
                    self._pg_ctl_stop(node, "fast", timeout=20)
                except ClusterError:
                    self._pg_ctl_stop(node, "immediate", timeout=20)
        self._started = False
        with _live_lock:
            _live.discard(self)
        if delete is None:
            delete = not self.keep
        if delete and self.base_dir != Path() and (self.base_dir / STATE_FILE).exists():
            shutil.rmtree(self.base_dir, ignore_errors=True)

    @classmethod
    def load(cls, base_dir: str | os.PathLike[str]) -> LocalCluster:
        """Attach to a cluster started earlier (by `pgsessions cluster up`) in ``base_dir``."""
        base = Path(base_dir).resolve()
        try:
            state = json.loads((base / STATE_FILE).read_text())
        except FileNotFoundError:
            raise ClusterError(f"no cluster in {base} (run `pgsessions cluster up`)") from None
        cluster = cls(
            replicas=len(state["nodes"]) - 1,
            sync=state["sync"],
            base_dir=base,
            keep=True,
            fsync=state.get("fsync", True),
            bindir=state.get("bindir"),
        )
        if state.get("tls"):
            cluster.tls = ClusterTls(base / TLS_DIR)
        cluster.nodes = [
            Node(name=n["name"], port=n["port"], base_dir=base, tls=cluster.tls)
            for n in state["nodes"]
        ]
        cluster._primary_name = state["primary"]
        cluster._started = any(n.is_running() for n in cluster.nodes)
        return cluster

    def resume(self) -> None:
        """Start the stopped servers of a loaded cluster again, keeping their data."""
        order = [self.primary, *self.replicas]
        for node in order:
            if not node.is_running():
                if not node.data_dir.exists():
                    raise ClusterError(f"{node.name} has no data directory in {self.base_dir}")
                self._pg_ctl_start(node)
        for replica in self.replicas:
            self._wait_streaming(replica, self.primary)
        self._started = True
        with _live_lock:
            if not self.keep:
                _live.add(self)

    def is_running(self) -> bool:
        return bool(self.nodes) and all(n.is_running() for n in self.nodes)

    # ---------------------------------------------------------------- node operations
    def stop_node(self, node: Node, mode: StopMode = "fast") -> None:
        """Stop one server; ``mode="immediate"`` is a crash (no shutdown checkpoint)."""
        self._pg_ctl_stop(node, mode)

    def crash(self, node: Node) -> None:
        """Kill a server the hard way (pg_ctl stop -m immediate)."""
        self._pg_ctl_stop(node, "immediate")

    def start_node(self, node: Node) -> None:
        """Start a stopped server and wait until it accepts connections."""
        self._pg_ctl_start(node)
        wait_for(lambda: node.role() != "down", 30, f"{node.name} to accept connections")

    def pause_replay(self, node: Node) -> None:
        """Pause WAL replay on a replica; returns once replay is paused."""
        node.execute("SELECT pg_wal_replay_pause()")
        wait_for(
            lambda: node.execute("SELECT pg_get_wal_replay_pause_state()")[0][0] == "paused",
            10,
            f"replay to pause on {node.name}",
        )

    def resume_replay(self, node: Node) -> None:
        node.execute("SELECT pg_wal_replay_resume()")
        wait_for(
            lambda: node.execute("SELECT pg_get_wal_replay_pause_state()")[0][0] == "not paused",
            10,
            f"replay to resume on {node.name}",
        )

    def set_replay_delay(self, node: Node, seconds: float) -> None:
        """Set recovery_min_apply_delay on a replica (0 removes the delay)."""
        ms = int(seconds * 1000)
        node.execute(f"ALTER SYSTEM SET recovery_min_apply_delay = '{ms}ms'")
        node.execute("SELECT pg_reload_conf()")
        wait_for(
            lambda: (
                node.execute(
                    "SELECT setting::int FROM pg_settings WHERE name = 'recovery_min_apply_delay'"
                )[0][0]
                == ms
            ),
            10,
            f"recovery_min_apply_delay={ms}ms on {node.name}",
        )

    def set_primary_conninfo(self, node: Node, conninfo: str) -> None:
        """Point a replica's walreceiver at ``conninfo`` (a broken one stops streaming)."""
        self._write_node_conf(node, primary_conninfo=conninfo, slot=node.name)
        node.execute("SELECT pg_reload_conf()")

    def promote(self, node: Node, *, follow: bool = False) -> None:
        """Promote a replica and wait until it accepts writes.

        With ``follow=True`` every other running replica then follows it. In synchronous mode
        the new primary waits for no standby until replicas follow it (see :meth:`follow`).
        """
        node.execute("SELECT pg_promote(true, 60)", timeout=70)
        wait_for(lambda: node.role() == "primary", 60, f"{node.name} to leave recovery")
        # the end-of-recovery checkpoint runs in the background; pg_rewind reads the new
        # timeline from pg_control, so wait for a checkpoint before anyone rewinds against it
        node.execute("CHECKPOINT", timeout=60)
        self._primary_name = node.name
        self._write_node_conf(node, sync_names="")
        node.execute("SELECT pg_reload_conf()")
        self._save_state()
        if follow:
            for other in self.replicas:
                if other.is_running():
                    self.follow(other, node)

    def follow(self, node: Node, new_primary: Node | None = None) -> None:
        """Make ``node`` (a replica, or an old primary) stream from ``new_primary``.

        The node is stopped, rewound with pg_rewind (or rebuilt from a fresh base backup when
        rewind cannot help), configured as a standby of the new primary and started. In
        synchronous mode it is then added to the new primary's synchronous standbys.
        """
        target = new_primary or self.primary
        if node.name == target.name:
            raise ClusterError(f"{node.name} cannot follow itself")
        self._ensure_slot(target, node.name)
        if node.is_running():
            self._pg_ctl_stop(node, "fast")
        try:
            run_as_server_user(
                [
                    str(self.bindir / "pg_rewind"),
                    f"--target-pgdata={node.data_dir}",
                    f"--source-server={target.conninfo}",
                ],
                timeout=120,
            )
        except ClusterError:
            self._rebuild(node, target)
        self._configure_standby(node, target)
        self._pg_ctl_start(node)
        self._wait_streaming(node, target)
        if self.sync:
            names = [r.name for r in self.replicas if r.is_running()]
            self._set_sync_standbys(target, names)
        self._save_state()

    def rejoin_as_replica(self, node: Node) -> None:
        """Turn a stopped old primary into a replica of the current primary."""
        self.follow(node, self.primary)

    def wait_caught_up(self, timeout: float = 30.0) -> None:
        """Wait until every running replica has replayed the primary's current flush position."""
        target = self.primary.execute("SELECT pg_current_wal_flush_lsn()")[0][0]

        def replayed(node: Node) -> Callable[[], bool]:
            sql = "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn"
            return lambda: bool(node.execute(sql, (str(target),))[0][0])

        for r in self.replicas:
            if r.is_running():
                wait_for(replayed(r), timeout, f"{r.name} to replay up to {target}")

    def status(self) -> list[dict[str, Any]]:
        """One row per node: name, port, role, running, streaming, lag bytes and seconds."""
        rows: list[dict[str, Any]] = []
        primary_lsn: Any = None
        try:
            primary_lsn = self.primary.execute("SELECT pg_current_wal_flush_lsn()")[0][0]
        except (psycopg.Error, ClusterError):
            pass
        for n in self.nodes:
            row: dict[str, Any] = {
                "node": n.name,
                "port": n.port,
                "dsn": n.dsn,
                "role": n.role(),
                "lag_bytes": None,
                "lag_seconds": None,
                "streaming": None,
            }
            if row["role"] == "replica":
                try:
                    r = n.execute(
                        "SELECT pg_last_wal_replay_lsn()::text, "
                        "coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0),"
                        " (SELECT status FROM pg_stat_wal_receiver)"
                    )[0]
                    row["streaming"] = r[2] == "streaming"
                    if primary_lsn is not None:
                        lag = self.primary.execute(
                            "SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)",
                            (str(primary_lsn), r[0]),
                        )[0][0]
                        row["lag_bytes"] = max(0, int(lag))
                        row["lag_seconds"] = 0.0 if row["lag_bytes"] == 0 else float(r[1])
                except psycopg.Error:
                    pass
            rows.append(row)
        return rows

    # ---------------------------------------------------------------- internals
    def _port_for(self, index: int, used: set[int]) -> int:
        if self._requested_ports is not None:
            port = self._requested_ports[index]
            if not port_is_free(port):
                raise ClusterError(
                    f"port {port} is already in use on 127.0.0.1: choose another port "
                    "or leave ports unset to pick free ones"
                )
            return port
        return pick_free_port(used)

    def _prepare_dir(self) -> None:
        me = os.geteuid()
        srv = server_user()
        allowed = {me} | ({srv.pw_uid} if srv else set())
        if self._base_dir_arg is None:
            self.base_dir = Path(tempfile.mkdtemp(prefix="pgsessions-cluster-"))
        else:
            self.base_dir = self._base_dir_arg
            if self.base_dir.exists():
                st = self.base_dir.stat()
                if st.st_uid not in allowed:
                    try:
                        owner = pwd.getpwuid(st.st_uid).pw_name
                    except KeyError:
                        owner = f"uid {st.st_uid}"
                    raise ClusterError(
                        f"directory {self.base_dir} is owned by {owner}, not by you: "
                        "choose another directory (--dir) or remove it"
                    )
                if (self.base_dir / STATE_FILE).exists():
                    self._clean_stale()
                elif any(self.base_dir.iterdir()):
                    raise ClusterError(
                        f"directory {self.base_dir} is not empty and holds no pgsessions "
                        "cluster: refusing to use it"
                    )
            self.base_dir.mkdir(parents=True, exist_ok=True)
        # the server user must be able to reach its directories
        self.base_dir.chmod(0o755)
        self._check_reachable(srv)
        chown_to_server_user(self.base_dir)

    def _check_reachable(self, srv: pwd.struct_passwd | None) -> None:
        if srv is None:
            return
        for parent in self.base_dir.parents:
            st = parent.stat()
            if st.st_uid == srv.pw_uid:
                continue
            ok = st.st_mode & 0o001 or (st.st_gid == srv.pw_gid and st.st_mode & 0o010)
            if not ok:
                raise ClusterError(
                    f"the server user {srv.pw_name!r} cannot reach {self.base_dir}: "
                    f"{parent} is not searchable by it (chmod o+x {parent}, or choose a "
                    "directory under /tmp)"
                )

    def _clean_stale(self) -> None:
        """A directory left by a killed run: stop its servers, then start afresh in it."""
        try:
            state = json.loads((self.base_dir / STATE_FILE).read_text())
            for n in state.get("nodes", []):
                node = Node(name=n["name"], port=n["port"], base_dir=self.base_dir)
                if node.is_running():
                    self._pg_ctl_stop(node, "immediate")
        except (OSError, ValueError, KeyError):
            pass
        for child in self.base_dir.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()

    def _save_state(self) -> None:
        state = {
            "bindir": str(self.bindir),
            "sync": self.sync,
            "fsync": self.fsync,
            "primary": self._primary_name,
            "tls": self.tls is not None,
            "nodes": [{"name": n.name, "port": n.port} for n in self.nodes],
        }
        path = self.base_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(path)

    def _mkdir(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o700)
        chown_to_server_user(path)

    def _write_file(self, path: Path, text: str) -> None:
        path.write_text(text)
        chown_to_server_user(path)

    def _init_primary(self, node: Node, bindir: Path) -> None:
        self._mkdir(node.dir)
        pwfile = self.tls.write_pwfile() if self.tls is not None else None
        try:
            run_as_server_user(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(node.data_dir),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                    *([f"--pwfile={pwfile}"] if pwfile is not None else []),
                ],
                timeout=120,
            )
        finally:
            if pwfile is not None:
                pwfile.unlink(missing_ok=True)
        if self.tls is not None:
            # replaces initdb's trust lines; copied to the replicas by pg_basebackup
            self._write_file(node.data_dir / "pg_hba.conf", HBA)
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": "''",
            "wal_level": "replica",
            "max_wal_senders": "10",
            "max_replication_slots": "10",
            "wal_log_hints": "on",
            "hot_standby": "on",
            "hot_standby_feedback": "on",
            "wal_keep_size": "'256MB'",
            "max_connections": "300",
            "shared_buffers": "'64MB'",
            "fsync": "on" if self.fsync else "off",
            "synchronous_commit": "on",
            "wal_receiver_status_interval": "'1s'",
            "wal_retrieve_retry_interval": "'500ms'",
            "log_line_prefix": "'%m [%p] %q%a '",
            "log_min_messages": "warning",
            **self.settings,
        }
        lines = [f"{k} = {v}" for k, v in conf.items()]
        lines.append(f"include_if_exists = '{NODE_CONF}'")
        with open(node.data_dir / "postgresql.conf", "a") as f:
            f.write("\n# pgsessions devcluster\n" + "\n".join(lines) + "\n")
        self._write_node_conf(node)
        self._pg_ctl_start(node)
        node.execute(f"CREATE DATABASE {DBNAME}", dbname="postgres")

    def _write_node_conf(
        self,
        node: Node,
        *,
        primary_conninfo: str | None = None,
        slot: str | None = None,
        sync_names: str | None = None,
    ) -> None:
        lines = [
            f"port = {node.port}",
            f"cluster_name = '{node.name}'",
            f"synchronous_standby_names = '{sync_names or ''}'",
        ]
        if primary_conninfo is not None:
            escaped = primary_conninfo.replace("'", "''")
            lines.append(f"primary_conninfo = '{escaped} application_name={node.name}'")
        if slot is not None:
            lines.append(f"primary_slot_name = '{slot}'")
        if node.tls is not None:
            lines += node.tls.server_settings(node.name)
        self._write_file(node.data_dir / NODE_CONF, "\n".join(lines) + "\n")

    def _clean_auto_conf(self, node: Node) -> None:
        path = node.data_dir / "postgresql.auto.conf"
        if not path.exists():
            return
        keep = [
            line
            for line in path.read_text().splitlines()
            if not re.match(rf"\s*({'|'.join(MANAGED_KEYS)})\s*=", line)
        ]
        self._write_file(path, "\n".join(keep) + "\n")

    def _ensure_slot(self, primary: Node, slot: str) -> None:
        primary.execute(
            "SELECT pg_create_physical_replication_slot(%s, true) "
            "WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = %s)",
            (slot, slot),
        )

    def _create_replica(self, node: Node, primary: Node) -> None:
        self._ensure_slot(primary, node.name)
        self._mkdir(node.dir)
        self._basebackup(node, primary)
        self._configure_standby(node, primary)
        self._pg_ctl_start(node)

    def _basebackup(self, node: Node, primary: Node) -> None:
        run_as_server_user(
            [
                str(self.bindir / "pg_basebackup"),
                "-D",
                str(node.data_dir),
                "-h",
                "127.0.0.1",
                "-p",
                str(primary.port),
                "-U",
                "postgres",
                "-X",
                "stream",
                "-S",
                node.name,
                "--no-sync",
                "-c",
                "fast",
            ],
            timeout=300,
            env=self._client_tool_env(),
        )

    def _client_tool_env(self) -> dict[str, str] | None:
        """TLS and passfile settings for libpq tools run as the server user."""
        if self.tls is None:
            return None
        return {
            "PGSSLMODE": "verify-full",
            "PGSSLROOTCERT": str(self.tls.ca_cert),
            "PGPASSFILE": str(self.tls.passfile),
        }

    def _rebuild(self, node: Node, primary: Node) -> None:
        shutil.rmtree(node.data_dir, ignore_errors=True)
        self._basebackup(node, primary)

    def _configure_standby(self, node: Node, primary: Node) -> None:
        self._clean_auto_conf(node)
        self._write_file(node.data_dir / "standby.signal", "")
        self._write_node_conf(node, primary_conninfo=primary.conninfo, slot=node.name)
        for stale in ("postmaster.pid", "recovery.signal"):
            p = node.data_dir / stale
            if p.exists() and not node.is_running():
                p.unlink()

    def _set_sync_standbys(self, primary: Node, names: list[str]) -> None:
        value = f"ANY 1 ({', '.join(names)})" if names else ""
        self._write_node_conf(primary, sync_names=value)
        primary.execute("SELECT pg_reload_conf()")
        wait_for(
            lambda: primary.execute("SHOW synchronous_standby_names")[0][0] == value,
            10,
            f"synchronous_standby_names on {primary.name}",
        )
        if names:
            wait_for(
                lambda: (
                    primary.execute(
                        "SELECT count(*) FROM pg_stat_replication "
                        "WHERE sync_state IN ('sync','quorum') AND application_name = ANY(%s)",
                        (names,),
                    )[0][0]
                    == len(names)
                ),
                30,
                f"{', '.join(names)} to be synchronous standbys of {primary.name}",
            )

    def _wait_streaming(self, replica: Node, primary: Node) -> None:
        tli = primary.execute("SELECT timeline_id FROM pg_control_checkpoint()")[0][0]

        def streaming() -> bool:
            # a diverged standby connects and drops again in a loop: ask it, not the primary,
            # whether it streams on the primary's timeline
            rows = replica.execute("SELECT status, received_tli FROM pg_stat_wal_receiver")
            return bool(rows) and rows[0][0] == "streaming" and rows[0][1] == tli

        try:
            wait_for(streaming, 30, f"{replica.name} to stream from {primary.name}")
        except ClusterError as exc:
            raise ClusterError(f"{exc}\n--- {replica.name} log ---\n{replica.log_tail()}") from None

    def _pg_ctl_start(self, node: Node) -> None:
        for attempt in range(5):
            if node.log_path.exists():
                offset = node.log_path.stat().st_size
            else:
                offset = 0
            proc = self._pg_ctl(
                ["start", "-D", str(node.data_dir), "-l", str(node.log_path), "-w", "-t", "60"],
                timeout=90,
            )
            if proc.returncode == 0:
                return
            log = (
                node.log_path.read_text(errors="replace")[offset:] if node.log_path.exists() else ""
            )
            if "could not bind" in log or "Address already in use" in log:
                if node.name != self._primary_name or not self._started:
                    node.port = pick_free_port({n.port for n in self.nodes})
                    conninfo = None
                    if (node.data_dir / "standby.signal").exists():
                        conninfo = self.primary.conninfo
                    self._write_node_conf(
                        node,
                        primary_conninfo=conninfo,
                        slot=node.name if conninfo else None,
                    )
                    continue
            tail = "\n".join(log.splitlines()[-30:]) or node.log_tail()
            raise ClusterError(
                f"{node.name} (port {node.port}) failed to start (attempt {attempt + 1}): "
                f"{proc.stderr.strip() or proc.stdout.strip()}\n--- server log ---\n{tail}"
            )
        raise ClusterError(f"{node.name}: no free port after 5 attempts")

    def _pg_ctl_stop(self, node: Node, mode: StopMode, timeout: float = 60) -> None:
        if not node.is_running():
            return
        proc = self._pg_ctl(
            ["stop", "-D", str(node.data_dir), "-m", mode, "-w", "-t", str(int(timeout))],
            timeout=timeout + 10,
        )
        if proc.returncode != 0 and node.is_running():
            raise ClusterError(f"could not stop {node.name}: {proc.stderr.strip()}")

    def _pg_ctl(self, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bindir / "pg_ctl"), *args]
        user = server_user()
        if user is not None:
            argv = ["runuser", "-u", user.pw_name, "--", *argv]
        try:
            # a session of its own: Ctrl-C in the terminal must not reach the servers
            return subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd="/",
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "LC_ALL": "C", "LANG": "C"},
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"pg_ctl {args[0]} did not finish in {timeout:.0f}s") from exc
