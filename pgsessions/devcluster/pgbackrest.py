"""pgBackRest for the local cluster: a repository in a directory, one stanza, asynchronous
``archive-push`` from every node, backups copied from a replica (``backup-standby``).

Layout of DIR::

    DIR/pgbackrest.conf   the configuration (every command is given ``--config``)
    DIR/repo/             the repository (repo1-path)
    DIR/spool/ log/ lock/ the asynchronous archiving queue, the tool's logs, its locks
    DIR/sock/             the servers' unix socket directory (pgBackRest connects by socket)
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .archive import archive_now
from .backups import Backup, BackupKind, ToolName
from .binaries import chown_to_server_user, run_as_server_user
from .cluster import LocalCluster
from .errors import ClusterError
from .node import Node
from .restored import Restored, conf_quote, new_restore_node, start_recovery
from .target import Target

STANZA = "pgsessions"
INSTALL_HINT = "install pgBackRest (`make backup-tools`, or `apt-get install pgbackrest`)"


def find_pgbackrest() -> str:
    found = shutil.which("pgbackrest") or shutil.which("pgbackrest", path="/usr/bin:/usr/sbin")
    if not found:
        raise ClusterError("pgbackrest not found; " + INSTALL_HINT)
    return found


def render_conf(root: Path, nodes: Sequence[Node]) -> str:
    """pgbackrest.conf for ``nodes`` (the primary first): pg1 is the primary, the replicas
    follow (pgBackRest finds the primary among them itself: a failover needs no new file)."""
    lines = [
        "[global]",
        f"repo1-path={root / 'repo'}",
        "repo1-retention-full=2",
        f"spool-path={root / 'spool'}",
        f"log-path={root / 'log'}",
        f"lock-path={root / 'lock'}",
        "log-level-console=warn",
        "log-level-file=info",
        "archive-async=y",
        "process-max=2",
        "compress-type=lz4",
        "start-fast=y",
        "backup-standby=y",
        "archive-timeout=60",
        "",
        f"[{STANZA}]",
    ]
    for i, node in enumerate(nodes, start=1):
        lines += [
            f"pg{i}-path={node.data_dir}",
            f"pg{i}-port={node.port}",
            f"pg{i}-socket-path={root / 'sock'}",
            f"pg{i}-user=postgres",
        ]
    return "\n".join(lines) + "\n"


def backup_from_info(info: dict[str, Any], seconds: float, source: str) -> Backup:
    """A :class:`Backup` from one entry of ``pgbackrest info --output=json``'s backup list."""
    size = info["info"]
    return Backup(
        tool="pgbackrest",
        label=info["label"],
        kind=info["type"],
        start_lsn=info["lsn"]["start"],
        stop_lsn=info["lsn"]["stop"],
        seconds=seconds,
        bytes=int(size["size"]),
        stored_bytes=int(size["repository"]["delta"]),
        source=source,
    )


class PgBackRest:
    """The pgBackRest implementation of :class:`~pgsessions.devcluster.backups.BackupTool`."""

    name: ToolName = "pgbackrest"

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.conf = self.root / "pgbackrest.conf"

    def _run(self, *args: str, timeout: float = 600) -> str:
        argv = [find_pgbackrest(), f"--config={self.conf}", f"--stanza={STANZA}", *args]
        return run_as_server_user(argv, timeout=timeout).stdout

    @property
    def archive_command(self) -> str:
        conf = shlex.quote(f"--config={self.conf}")
        return f"{shlex.quote(find_pgbackrest())} {conf} --stanza={STANZA} archive-push %p"

    def settings(self) -> dict[str, str]:
        find_pgbackrest()
        if self.root.exists() and any(self.root.iterdir()) and not self.conf.exists():
            raise ClusterError(f"{self.root} is not empty and holds no pgBackRest repository")
        for sub in ("", "repo", "spool", "log", "lock", "sock"):
            path = self.root / sub
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o755 if sub in ("", "sock") else 0o750)
            chown_to_server_user(path)
        # archive_command is set once the stanza exists, so that no push fails before it
        return {
            "archive_mode": "on",
            "archive_command": "''",
            "unix_socket_directories": conf_quote(str(self.root / "sock")),
        }

    def configure(self, cluster: LocalCluster) -> None:
        self.conf.write_text(render_conf(self.root, [cluster.primary, *cluster.replicas]))
        chown_to_server_user(self.conf)
        self._run("stanza-create", timeout=120)
        for node in [cluster.primary, *cluster.replicas]:
            node.execute(f"ALTER SYSTEM SET archive_command = {conf_quote(self.archive_command)}")
            node.execute("SELECT pg_reload_conf()")
        self._run("check", timeout=120)

    def is_configured(self, cluster: LocalCluster) -> bool:
        """Whether the cluster's primary already archives into this repository."""
        command = str(cluster.primary.execute("SHOW archive_command")[0][0])
        return self.conf.exists() and str(self.conf) in command

    def backups(self) -> list[dict[str, Any]]:
        """The repository's backups, oldest first (``pgbackrest info``'s JSON)."""
        info = json.loads(self._run("info", "--output=json", timeout=60))
        return list(info[0]["backup"]) if info else []

    def backup(self, cluster: LocalCluster, kind: BackupKind = "full") -> Backup:
        t0 = time.monotonic()
        self._run("backup", f"--type={kind}", timeout=1800)
        seconds = time.monotonic() - t0
        taken = self.backups()
        if not taken:
            raise ClusterError("pgbackrest backup finished, yet `pgbackrest info` lists none")
        source = next((r.name for r in cluster.replicas if r.is_running()), cluster.primary.name)
        return backup_from_info(taken[-1], seconds, source)

    def archive_now(self, cluster: LocalCluster) -> str:
        return archive_now(cluster.primary)

    def restore(
        self,
        backup: Backup,
        dest: Path,
        target: Target,
        bindir: Path,
        *,
        delta: bool = False,
    ) -> Restored:
        node = new_restore_node(dest)
        if delta and not (node.data_dir / "PG_VERSION").exists():
            raise ClusterError(f"a delta restore needs an earlier restore in {node.data_dir}")
        if not delta:
            node.data_dir.mkdir(mode=0o700)
            chown_to_server_user(node.data_dir)
        t0 = time.monotonic()
        self._run(
            "restore",
            f"--pg1-path={node.data_dir}",
            f"--set={backup.label}",
            "--archive-mode=off",
            *target.pgbackrest_args(),
            *(["--delta"] if delta else []),
            timeout=1800,
        )
        return start_recovery(node, bindir, recovery=[], start_lsn=backup.start_lsn, started=t0)
