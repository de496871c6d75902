"""One PostgreSQL server of the local cluster."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import psycopg
from psycopg.conninfo import make_conninfo

from .tls import ClusterTls

DBNAME = "pgsessions"


def loopback_dsn(port: int, tls: ClusterTls | None = None) -> str:
    """libpq URL of a local server (or pooler) on ``port``: trust auth on loopback, or with
    ``tls`` verify-full against the cluster's CA (the password comes from PGPASSFILE)."""
    dsn = f"postgresql://postgres@127.0.0.1:{port}/{DBNAME}"
    if tls is None:
        return dsn
    return dsn + "?" + "&".join(f"{k}={quote(v, safe='/')}" for k, v in tls.client_params().items())


@dataclass
class Node:
    """A server of a LocalCluster: its name (also its cluster_name and slot name), port, paths."""

    name: str
    port: int
    base_dir: Path
    #: the cluster's TLS files when it requires TLS and SCRAM (``LocalCluster(tls=True)``)
    tls: ClusterTls | None = None

    @property
    def dir(self) -> Path:
        return self.base_dir / self.name

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def log_path(self) -> Path:
        return self.dir / "server.log"

    @property
    def dsn(self) -> str:
        """libpq URL of this node (no password: trust auth, or PGPASSFILE with TLS)."""
        return loopback_dsn(self.port, self.tls)

    @property
    def conninfo(self) -> str:
        """key=value conninfo, as used for primary_conninfo and pg_rewind (with TLS it names
        the cluster's passfile: the server user reads it)."""
        return self.conninfo_for(DBNAME)

    def conninfo_for(self, dbname: str) -> str:
        params: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "user": "postgres",
            "dbname": dbname,
        }
        if self.tls is not None:
            params.update(self.tls.client_params(), passfile=str(self.tls.passfile))
        return make_conninfo("", **params)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def is_running(self) -> bool:
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return False
        return Path(f"/proc/{pid}").exists()

    def pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def execute(
        self, sql: Any, params: Any = None, *, dbname: str = DBNAME, timeout: float = 5.0
    ) -> list[tuple[Any, ...]]:
        """Run one statement in autocommit and return its rows (empty when none)."""
        with psycopg.connect(
            self.conninfo_for(dbname),
            autocommit=True,
            connect_timeout=max(1, int(timeout)),
        ) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description is not None else []

    def role(self) -> Literal["primary", "replica", "down"]:
        """Asked of the server itself: `pg_is_in_recovery()`."""
        try:
            rows = self.execute("SELECT pg_is_in_recovery()", timeout=2)
        except psycopg.Error:
            return "down"
        return "replica" if rows[0][0] else "primary"

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "port": self.port,
            "dsn": self.dsn,
            "data_dir": str(self.data_dir),
            "log_path": str(self.log_path),
        }
