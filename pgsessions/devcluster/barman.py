"""Barman for the local cluster: a Barman home in a directory, run as the server user with a
configuration of its own; backups streamed from a replica with pg_basebackup
(``backup_method = postgres`` + ``primary_conninfo``), WAL shipped from the primary into
Barman's incoming directory by ``archive_command``.

What Barman cannot do here: incremental or differential backups with ``backup_method =
postgres`` (only rsync over SSH deduplicates, and that copies from the primary or needs SSH to
each server); so every Barman backup is a full one, and there is no delta restore.

Layout of DIR::

    DIR/barman.conf       the configuration (every command is given ``-c``)
    DIR/home/             barman_home: DIR/home/pgsessions/{base,wals,incoming}
    DIR/barman.log
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
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

SERVER = "pgsessions"
INSTALL_HINT = "install Barman (`make backup-tools`, or `apt-get install barman`)"


def find_barman() -> str:
    found = shutil.which("barman") or shutil.which("barman", path="/usr/bin:/usr/sbin")
    if not found:
        raise ClusterError("barman not found; " + INSTALL_HINT)
    return found


def render_conf(root: Path, primary: Node, source: Node, bindir: Path) -> str:
    """barman.conf: backups streamed from ``source`` (a replica, or the primary itself), WAL
    switches on the primary."""
    user = "postgres"
    lines = [
        "[barman]",
        f"barman_home = {root / 'home'}",
        f"barman_user = {user}",
        f"log_file = {root / 'barman.log'}",
        "log_level = INFO",
        "",
        f"[{SERVER}]",
        "description = pgsessions local cluster",
        f"conninfo = {source.conninfo_for('postgres')}",
        f"streaming_conninfo = {source.conninfo_for('postgres')}",
        "backup_method = postgres",
        "archiver = on",
        "streaming_archiver = off",
        f"path_prefix = {bindir}",
        "retention_policy = REDUNDANCY 2",
        "minimum_redundancy = 0",
        "immediate_checkpoint = true",
    ]
    if source.name != primary.name:
        lines.append(f"primary_conninfo = {primary.conninfo_for('postgres')}")
    return "\n".join(lines) + "\n"


def backup_from_show(info: dict[str, Any], seconds: float, source: str) -> Backup:
    """A :class:`Backup` from ``barman -f json show-backup``'s entry for one backup."""
    base = info["base_backup_information"]
    return Backup(
        tool="barman",
        label=info["backup_id"],
        kind="full",
        start_lsn=base["begin_lsn"],
        stop_lsn=base.get("end_lsn"),
        seconds=seconds,
        bytes=int(base.get("disk_usage_bytes") or base.get("backup_size_bytes") or 0),
        stored_bytes=int(base.get("disk_usage_bytes") or 0),
        source=source,
    )


class Barman:
    """The Barman implementation of :class:`~pgsessions.devcluster.backups.BackupTool`."""

    name: ToolName = "barman"

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.conf = self.root / "barman.conf"
        self.incoming = self.root / "home" / SERVER / "incoming"

    def _run(self, *args: str, timeout: float = 600) -> str:
        argv = [find_barman(), "-c", str(self.conf), "-q", *args]
        return run_as_server_user(argv, timeout=timeout).stdout

    def _json(self, *args: str) -> Any:
        argv = [find_barman(), "-c", str(self.conf), "-f", "json", *args]
        return json.loads(run_as_server_user(argv, timeout=120).stdout)

    def settings(self) -> dict[str, str]:
        find_barman()
        if self.root.exists() and any(self.root.iterdir()) and not self.conf.exists():
            raise ClusterError(f"{self.root} is not empty and holds no Barman home")
        for path in (self.root, self.root / "home", self.root / "home" / SERVER, self.incoming):
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o755 if path == self.root else 0o750)
            chown_to_server_user(path)
        inc = shlex.quote(str(self.incoming))
        command = f"test ! -f {inc}/%f && cp %p {inc}/%f"
        return {"archive_mode": "on", "archive_command": conf_quote(command)}

    def configure(self, cluster: LocalCluster) -> None:
        source = cluster.replicas[0] if cluster.replicas else cluster.primary
        self.conf.write_text(render_conf(self.root, cluster.primary, source, cluster.bindir))
        chown_to_server_user(self.conf)
        self.archive_now(cluster)
        self._run("check", SERVER, timeout=120)

    def is_configured(self, cluster: LocalCluster) -> bool:
        command = str(cluster.primary.execute("SHOW archive_command")[0][0])
        return self.conf.exists() and str(self.incoming) in command

    def backups(self) -> list[dict[str, Any]]:
        """The backups Barman keeps, oldest first (``show-backup``'s JSON for each)."""
        listed = self._json("list-backups", SERVER).get(SERVER, [])
        ids = sorted(b["backup_id"] for b in listed if b.get("status") == "DONE")
        return [self._json("show-backup", SERVER, i)[SERVER] for i in ids]

    def backup(self, cluster: LocalCluster, kind: BackupKind = "full") -> Backup:
        if kind != "full":
            raise ClusterError("Barman's streaming backups (backup_method = postgres) are full")
        t0 = time.monotonic()
        self._run("backup", SERVER, timeout=600)
        # A standby backup ends in a WAL segment the primary has not finished: an idle primary
        # may not finish it for a long time (`backup --wait` then waits in vain). Switch WAL
        # there, file what arrived, and let Barman check the backup has all its WAL.
        self.archive_now(cluster)
        listed = self._json("list-backups", SERVER).get(SERVER, [])
        if not listed:
            raise ClusterError("barman backup finished, yet `barman list-backups` lists none")
        newest = max(b["backup_id"] for b in listed)
        self._run("check-backup", SERVER, newest, timeout=120)
        info = self._json("show-backup", SERVER, newest)[SERVER]
        if info.get("status") != "DONE":
            raise ClusterError(f"barman backup {newest} is {info.get('status')}, not DONE")
        seconds = time.monotonic() - t0
        source = cluster.replicas[0].name if cluster.replicas else cluster.primary.name
        return backup_from_show(info, seconds, source)

    def archive_now(self, cluster: LocalCluster) -> str:
        # a backup may end exactly at a segment boundary (Barman then waits for the segment
        # after it): a commit record first, so that the switch below always finishes one
        cluster.primary.execute("SELECT pg_current_xact_id()")
        lsn = archive_now(cluster.primary)
        self._run("archive-wal", SERVER, timeout=120)
        return lsn

    def restore(
        self,
        backup: Backup,
        dest: Path,
        target: Target,
        bindir: Path,
        *,
        delta: bool = False,
    ) -> Restored:
        if delta:
            raise ClusterError("Barman has no delta restore (`barman recover` copies all)")
        node = new_restore_node(dest)
        t0 = time.monotonic()
        self._run("recover", *target.barman_args(), SERVER, backup.label, str(node.data_dir))
        return start_recovery(node, bindir, recovery=[], start_lsn=backup.start_lsn, started=t0)
