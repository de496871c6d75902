"""A local Patroni cluster: one etcd and N Patroni members on loopback (synchronous_mode).

Everything lives in one directory: ``etcd/`` (data, log), ``<member>/`` (patroni.yml, data
directory, unix socket directory, logs) and ``patroni.json`` (ports and process ids) so that
`pgsessions cluster status|down` find it. Processes run as the server user in sessions of
their own. Timing is short for tests: ttl 10 s, loop_wait 2 s, retry_timeout 5 s.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from .binaries import chown_to_server_user, find_bindir, server_user
from .cluster import wait_for
from .errors import ClusterError
from .node import DBNAME, loopback_dsn
from .ports import pick_free_port
from .proxy import ThreadedProxy

STATE_FILE = "patroni.json"
INSTALL_HINT = (
    "install Patroni and etcd (Debian/Ubuntu: `apt-get install patroni etcd-server`; "
    "`make patroni` does it for you)"
)


def _exe(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")
    if not found:
        raise ClusterError(f"{name} not found; " + INSTALL_HINT)
    return found


def _get_json(url: str, timeout: float = 2.0) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # Patroni answers 503 with a JSON body too
        return json.loads(exc.read() or b"null")


@dataclass
class Member:
    """One Patroni member: its PostgreSQL port and REST API port."""

    name: str
    port: int
    rest_port: int
    dir: Path

    @property
    def dsn(self) -> str:
        return loopback_dsn(self.port)

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def config_path(self) -> Path:
        return self.dir / "patroni.yml"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"


class PatroniCluster:
    """etcd + ``members`` Patroni members in ``base_dir`` (a temporary one by default)."""

    def __init__(
        self,
        members: int = 3,
        *,
        base_dir: str | os.PathLike[str] | None = None,
        keep: bool = False,
        sync: bool = True,
        fsync: bool = True,
        ttl: int = 10,
        loop_wait: int = 2,
        retry_timeout: int = 5,
        etcd_proxies: bool = False,
    ) -> None:
        if members < 1:
            raise ValueError("members must be >= 1")
        self.member_count = members
        self.base_dir = Path(base_dir).resolve() if base_dir is not None else Path()
        self._base_given = base_dir is not None
        self.keep = keep
        self.sync = sync
        self.fsync = fsync
        self.ttl, self.loop_wait, self.retry_timeout = ttl, loop_wait, retry_timeout
        #: each member reaches etcd through a TCP proxy of its own (in this process), so one
        #: member can be cut off from etcd (:meth:`cut_etcd`)
        self.etcd_proxies = etcd_proxies
        self._proxies: dict[str, ThreadedProxy] = {}
        self.scope = f"pgsessions-{uuid.uuid4().hex[:8]}"
        self.etcd_port = 0
        self.etcd_peer_port = 0
        self.members: list[Member] = []
        self._pids: dict[str, int] = {}

    # ------------------------------------------------------------------ views
    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    def dsns(self) -> list[str]:
        return [m.dsn for m in self.members]

    def rest_urls(self) -> list[str]:
        return [m.rest_url for m in self.members]

    def cluster_info(self) -> dict[str, Any] | None:
        """Patroni's ``/cluster`` as the first answering member gives it (None if none)."""
        for m in self.members:
            try:
                info = _get_json(f"{m.rest_url}/cluster")
            except (OSError, ValueError):
                continue
            if isinstance(info, dict):
                return info
        return None

    def leader(self) -> Member | None:
        info = self.cluster_info() or {}
        for row in info.get("members", []):
            if row.get("role") == "leader" and row.get("state") == "running":
                return self.member(row["name"])
        return None

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(name)

    def status(self) -> list[dict[str, Any]]:
        """One row per member: name, port, REST URL, role, state, timeline, lag (Patroni's)."""
        rows = {r.get("name"): r for r in (self.cluster_info() or {}).get("members", [])}
        out = []
        for m in self.members:
            r = rows.get(m.name, {})
            out.append(
                {
                    "member": m.name,
                    "port": m.port,
                    "rest": m.rest_url,
                    "role": r.get("role", "down"),
                    "state": r.get("state", "-"),
                    "timeline": r.get("timeline"),
                    "lag": r.get("lag"),
                    "running": self._alive(m.name),
                }
            )
        return out

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> PatroniCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 90.0) -> PatroniCluster:
        """Start etcd, the first member (it bootstraps), then the others; wait until every
        member runs, one is leader and (sync) one is a synchronous standby."""
        patroni, etcd = _exe("patroni"), _exe("etcd")
        bindir = find_bindir()
        self._prepare_dir()
        try:
            used: set[int] = set()

            def port() -> int:
                p = pick_free_port(used)
                used.add(p)
                return p

            self.etcd_port, self.etcd_peer_port = port(), port()
            for i in range(self.member_count):
                name = f"member{i + 1}"
                self.members.append(Member(name, port(), port(), self.base_dir / name))
            self._start_etcd(etcd)
            for m in self.members:
                if self.etcd_proxies:
                    self._proxies[m.name] = ThreadedProxy("127.0.0.1", self.etcd_port).start()
                self._write_member(m, bindir)
            self._spawn(
                self.members[0].name,
                [patroni, str(self.members[0].config_path)],
                self.members[0].dir / "patroni.out",
            )
            self._save()
            wait_for(lambda: self.leader() is not None, timeout, "the first Patroni leader")
            leader = self.leader()
            assert leader is not None
            with psycopg.connect(
                f"host=127.0.0.1 port={leader.port} user=postgres dbname=postgres",
                autocommit=True,
            ) as conn:
                conn.execute(f"CREATE DATABASE {DBNAME}")
            for m in self.members[1:]:
                self._spawn(m.name, [patroni, str(m.config_path)], m.dir / "patroni.out")
            self._save()
            wait_for(self._ready, timeout, "every Patroni member to run and stream")
        except BaseException as exc:
            detail = self._log_tails() if isinstance(exc, ClusterError) else ""
            self.stop(delete=not self.keep)
            if detail:
                raise ClusterError(f"{exc}\n{detail}") from None
            raise
        return self

    def _ready(self) -> bool:
        info = self.cluster_info() or {}
        rows = info.get("members", [])
        if len(rows) != self.member_count:
            return False
        if any(r.get("state") not in ("running", "streaming") for r in rows):
            return False
        roles = sorted(r.get("role", "") for r in rows)
        if "leader" not in roles:
            return False
        if self.sync and self.member_count > 1 and "sync_standby" not in roles:
            return False
        leader = next(r.get("name") for r in rows if r.get("role") == "leader")
        for m in self.members:  # every member serves the database (replicas replayed it)
            with psycopg.connect(m.dsn, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
                if m.name == leader:
                    continue
                # Patroni 3.0 says "running" before a replica streams: one that does not yet
                # would be promoted without the data written meanwhile (asynchronous mode)
                row = conn.execute("SELECT status FROM pg_stat_wal_receiver").fetchone()
                if row is None or row[0] != "streaming":
                    return False
        return True

    def stop(self, *, delete: bool | None = None) -> None:
        """Stop the members (Patroni stops its PostgreSQL), then etcd; delete the directory
        unless kept."""
        members = [m.name for m in self.members] or [k for k in self._pids if k != "etcd"]
        for name in members:
            self._signal(name, signal.SIGTERM)
        for name in members:
            self._wait_gone(name, 30)
        for m in self.members:  # a member killed the hard way may leave its postmaster
            self._stop_postmaster(m)
        self._signal("etcd", signal.SIGTERM)
        self._wait_gone("etcd", 10)
        for proxy in self._proxies.values():
            proxy.stop()
        self._proxies.clear()
        if delete is None:
            delete = not self.keep
        if delete and (self.base_dir / STATE_FILE).exists():
            shutil.rmtree(self.base_dir, ignore_errors=True)

    @classmethod
    def load(cls, base_dir: str | os.PathLike[str]) -> PatroniCluster:
        base = Path(base_dir).resolve()
        try:
            state = json.loads((base / STATE_FILE).read_text())
        except FileNotFoundError:
            raise ClusterError(f"no Patroni cluster in {base}") from None
        c = cls(len(state["members"]), base_dir=base, keep=True, sync=state["sync"])
        c.scope = state["scope"]
        c.etcd_port, c.etcd_peer_port = state["etcd_port"], state["etcd_peer_port"]
        c.members = [
            Member(m["name"], m["port"], m["rest_port"], base / m["name"]) for m in state["members"]
        ]
        c._pids = {k: int(v) for k, v in state["pids"].items()}
        return c

    # ------------------------------------------------------------------ fault helpers
    def kill_member(self, name: str) -> None:
        """Kill a member's Patroni and its PostgreSQL at once (a lost node)."""
        self._signal(name, signal.SIGKILL)
        self._wait_gone(name, 10)
        pid = self._postmaster_pid(self.member(name))
        if pid is not None:
            os.kill(pid, signal.SIGKILL)

    def kill_patroni(self, name: str) -> None:
        """SIGKILL a member's Patroni only: its PostgreSQL runs on, unmanaged."""
        self._signal(name, signal.SIGKILL)
        self._wait_gone(name, 10)

    def kill_postmaster(self, name: str) -> int:
        """SIGKILL a member's postmaster only (Patroni lives on); returns its pid."""
        pid = self._postmaster_pid(self.member(name))
        if pid is None:
            raise ClusterError(f"{name} has no running postmaster")
        os.kill(pid, signal.SIGKILL)
        return pid

    def start_member(self, name: str) -> None:
        """Start a stopped member's Patroni again (it rejoins, with pg_rewind if needed)."""
        if self._alive(name):
            raise ClusterError(f"{name}'s Patroni is already running")
        m = self.member(name)
        self._stop_postmaster(m)  # an orphan postmaster would keep the port and data dir
        self._spawn(name, [_exe("patroni"), str(m.config_path)], m.dir / "patroni.out")
        self._save()

    def stop_etcd(self) -> None:
        """Kill etcd (SIGKILL: the DCS is gone at once)."""
        self._signal("etcd", signal.SIGKILL)
        self._wait_gone("etcd", 10)

    def start_etcd(self) -> None:
        """Start etcd again on its data directory (same ports and member id)."""
        self._start_etcd(_exe("etcd"))
        self._save()

    def cut_etcd(self, name: str) -> None:
        """Cut one member off from etcd: its proxy drops every packet (needs etcd_proxies)."""
        self._etcd_proxy(name).blackhole()

    def heal_etcd(self, name: str) -> None:
        self._etcd_proxy(name).forward()

    def switchover(self, candidate: str | None = None) -> subprocess.CompletedProcess[str]:
        """``patronictl switchover --force`` from the leader to ``candidate`` (or Patroni's
        choice)."""
        leader = self.leader()
        if leader is None:
            raise ClusterError("no leader to switch over from")
        argv = [_exe("patronictl"), "-c", str(leader.config_path), "switchover"]
        argv += ["--leader", leader.name, "--force"]
        if candidate is not None:
            argv += ["--candidate", candidate]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)

    def history(self) -> list[list[Any]]:
        """Patroni's ``/history``: [timeline, switch LSN, reason, ISO time, new leader]."""
        for m in self.members:
            try:
                rows = _get_json(f"{m.rest_url}/history", timeout=1.0)
            except (OSError, ValueError):
                continue
            if isinstance(rows, list):
                return rows
        return []

    def rest(self, name: str, path: str = "patroni", timeout: float = 1.0) -> Any:
        """One member's REST answer (``/patroni``, ``/cluster``...), None if it does not answer."""
        try:
            return _get_json(f"{self.member(name).rest_url}/{path}", timeout=timeout)
        except (OSError, ValueError):
            return None

    def member_log(self, name: str) -> str:
        """The member's Patroni log (patroni.log and its console output)."""
        m = self.member(name)
        parts = []
        for f in (m.dir / "patroni.log", m.dir / "patroni.out"):
            try:
                parts.append(f.read_text(errors="replace"))
            except OSError:
                pass
        return "\n".join(parts)

    # ------------------------------------------------------------------ internals
    def _etcd_proxy(self, name: str) -> ThreadedProxy:
        try:
            return self._proxies[name]
        except KeyError:
            raise ClusterError("the cluster was started without etcd_proxies=True") from None

    def _etcd_section(self, m: Member) -> dict[str, Any]:
        proxy = self._proxies.get(m.name)
        if proxy is None:
            return {"hosts": [f"127.0.0.1:{self.etcd_port}"]}
        # use_proxies: talk to the proxy only, never to the members etcd advertises
        return {"hosts": [f"127.0.0.1:{proxy.port}"], "use_proxies": True}

    def _prepare_dir(self) -> None:
        if not self._base_given:
            self.base_dir = Path(tempfile.mkdtemp(prefix="pgsessions-patroni-"))
        elif self.base_dir.exists() and any(self.base_dir.iterdir()):
            if (self.base_dir / STATE_FILE).exists():
                PatroniCluster.load(self.base_dir).stop(delete=True)
            else:
                raise ClusterError(f"directory {self.base_dir} is not empty: refusing to use it")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.base_dir.chmod(0o755)
        chown_to_server_user(self.base_dir)

    def _mkdir(self, path: Path, mode: int = 0o700) -> None:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
        chown_to_server_user(path)

    def _write(self, path: Path, text: str) -> None:
        path.write_text(text)
        chown_to_server_user(path)

    def _start_etcd(self, etcd: str) -> None:
        d = self.base_dir / "etcd"
        self._mkdir(d)
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        argv = [
            etcd,
            "--name=etcd0",
            f"--data-dir={d / 'data'}",
            f"--listen-client-urls={self.etcd_url}",
            f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=etcd0={peer}",
            f"--initial-cluster-token={self.scope}",
            "--initial-cluster-state=new",
            "--log-level=warn",
        ]
        self._spawn("etcd", argv, d / "etcd.log")
        wait_for(
            lambda: str(_get_json(f"{self.etcd_url}/health").get("health")) == "true",
            30,
            "etcd to answer",
        )

    def _write_member(self, m: Member, bindir: Path) -> None:
        self._mkdir(m.dir)
        params = {
            "wal_level": "replica",
            "hot_standby": "on",
            "hot_standby_feedback": "on",
            "wal_log_hints": "on",
            "max_connections": 300,
            "max_wal_senders": 10,
            "max_replication_slots": 10,
            "wal_keep_size": "256MB",
            "shared_buffers": "64MB",
            "fsync": "on" if self.fsync else "off",
            "wal_receiver_status_interval": "1s",
        }
        conf: dict[str, Any] = {
            "scope": self.scope,
            "namespace": "/pgsessions/",
            "name": m.name,
            "log": {"level": "INFO", "dir": str(m.dir)},
            "restapi": {
                "listen": f"127.0.0.1:{m.rest_port}",
                "connect_address": f"127.0.0.1:{m.rest_port}",
            },
            "etcd3": self._etcd_section(m),
            "bootstrap": {
                "dcs": {
                    "ttl": self.ttl,
                    "loop_wait": self.loop_wait,
                    "retry_timeout": self.retry_timeout,
                    "maximum_lag_on_failover": 1048576,
                    "synchronous_mode": self.sync,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "parameters": params,
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C"}, "data-checksums"],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{m.port}",
                "connect_address": f"127.0.0.1:{m.port}",
                "data_dir": str(m.data_dir),
                "bin_dir": str(bindir),
                "pgpass": str(m.dir / "pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres"},
                    "replication": {"username": "postgres"},
                    "rewind": {"username": "postgres"},
                },
                "parameters": {"unix_socket_directories": str(m.dir)},
                # a spread checkpoint on an idle primary delays a clone by minutes
                "basebackup": [{"checkpoint": "fast"}],
                "pg_hba": [
                    "local all all trust",
                    "host all all 127.0.0.1/32 trust",
                    "host replication all 127.0.0.1/32 trust",
                ],
            },
        }
        # JSON is YAML: no YAML library needed
        self._write(m.config_path, json.dumps(conf, indent=2))
        m.config_path.chmod(0o600)

    def _spawn(self, name: str, argv: list[str], log: Path) -> None:
        user = server_user()
        cmd = ["runuser", "-u", user.pw_name, "--", *argv] if user is not None else argv
        env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
        env.update({"LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"})
        if user is not None:
            env["HOME"] = str(self.base_dir)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(self.base_dir),
                env=env,
                start_new_session=True,
            )
        chown_to_server_user(log)
        self._pids[name] = proc.pid

    def _save(self) -> None:
        state = {
            "scope": self.scope,
            "sync": self.sync,
            "etcd_port": self.etcd_port,
            "etcd_peer_port": self.etcd_peer_port,
            "members": [
                {"name": m.name, "port": m.port, "rest_port": m.rest_port} for m in self.members
            ],
            "pids": self._pids,
        }
        (self.base_dir / STATE_FILE).write_text(json.dumps(state, indent=2))

    def _alive(self, name: str) -> bool:
        """The process started for ``name`` (runuser's, whose child is the real one) runs."""
        pid = self._pids.get(name)
        if pid is None:
            return False
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z" and str(self.base_dir).encode() in cmd

    def _signal(self, name: str, sig: signal.Signals) -> None:
        pid = self._pids.get(name)
        if pid is None or not self._alive(name):
            return
        try:
            os.killpg(pid, sig)  # runuser and its child share the session we gave them
        except ProcessLookupError:
            pass

    def _wait_gone(self, name: str, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self._alive(name) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._alive(name):
            self._signal(name, signal.SIGKILL)
        pid = self._pids.get(name)
        if pid is not None:
            try:
                os.waitpid(pid, os.WNOHANG)  # reap it when we are its parent
            except ChildProcessError:
                pass

    def _postmaster_pid(self, m: Member) -> int | None:
        try:
            pid = int((m.data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if Path(f"/proc/{pid}").exists() else None

    def _stop_postmaster(self, m: Member) -> None:
        pid = self._postmaster_pid(m)
        if pid is None:
            return
        os.kill(pid, signal.SIGQUIT)  # immediate shutdown
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _log_tails(self) -> str:
        parts = []
        for log in sorted([*self.base_dir.glob("*/*.log"), *self.base_dir.glob("*/*.out")]):
            try:
                tail = log.read_text(errors="replace")[-1200:]
            except OSError:
                continue
            parts.append(f"--- {log.relative_to(self.base_dir)}\n{tail}")
        return "\n".join(parts)
