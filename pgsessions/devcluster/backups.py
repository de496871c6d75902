"""One small interface over the backup tools: take a backup; restore one to a target into a
directory. Three implementations: the plain archive (cp + pg_basebackup, archive.py),
pgBackRest (pgbackrest.py) and Barman (barman.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from .archive import archive_now, archive_settings, base_backup, prepare_archive
from .archive import restore as cp_restore
from .cluster import LocalCluster
from .errors import ClusterError
from .restored import Restored
from .target import Target

ToolName = Literal["cp", "pgbackrest", "barman"]
TOOLS: tuple[ToolName, ...] = ("cp", "pgbackrest", "barman")
BackupKind = Literal["full", "diff", "incr"]


@dataclass(frozen=True)
class Backup:
    """A backup a tool holds: its id, kind, WAL range, what it took and weighs."""

    tool: str
    label: str
    kind: str
    start_lsn: str
    stop_lsn: str | None
    seconds: float
    #: the database size the backup restores
    bytes: int
    #: what this backup added to the repository (compressed, only changed files for diff/incr)
    stored_bytes: int
    #: the node the files were copied from
    source: str


class BackupTool(Protocol):
    """What the drills and ``cluster up --backup`` need of a backup tool."""

    name: ToolName
    root: Path

    def settings(self) -> dict[str, str]:
        """postgresql.conf settings every node starts with (archiving on)."""
        ...

    def configure(self, cluster: LocalCluster) -> None:
        """Set up the repository for the running ``cluster`` and check that WAL arrives."""
        ...

    def backup(self, cluster: LocalCluster, kind: BackupKind = "full") -> Backup:
        """Take an online backup while the cluster serves writes."""
        ...

    def is_configured(self, cluster: LocalCluster) -> bool:
        """Whether the running ``cluster``'s primary archives into this repository."""
        ...

    def archive_now(self, cluster: LocalCluster) -> str:
        """Switch WAL and wait until the tool holds everything before the returned LSN."""
        ...

    def restore(
        self,
        backup: Backup,
        dest: Path,
        target: Target,
        bindir: Path,
        *,
        delta: bool = False,
    ) -> Restored:
        """A new server in ``dest`` from ``backup`` plus WAL, stopped at ``target``, promoted;
        ``delta`` restores over a stopped earlier restore in ``dest`` (only changed files)."""
        ...


class CpArchive:
    """The plain PostgreSQL mechanism: archive_command ``cp``, pg_basebackup, restore_command."""

    name: ToolName = "cp"

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def settings(self) -> dict[str, str]:
        prepare_archive(self.root)
        return archive_settings(self.root)

    def configure(self, cluster: LocalCluster) -> None:
        archive_now(cluster.primary)

    def backup(self, cluster: LocalCluster, kind: BackupKind = "full") -> Backup:
        if kind != "full":
            raise ClusterError("the plain archive takes full base backups only")
        b = base_backup(cluster.primary, self.root, cluster.bindir)
        return Backup("cp", Path(b.path).name, "full", b.start_lsn, None, b.seconds, b.bytes,
                      b.bytes, cluster.primary.name)  # fmt: skip

    def is_configured(self, cluster: LocalCluster) -> bool:
        command = str(cluster.primary.execute("SHOW archive_command")[0][0])
        return str(self.root / "wal") in command

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
        if delta:
            raise ClusterError("the plain archive has no delta restore")
        from .archive import BaseBackup

        base = BaseBackup(str(self.root / "base" / backup.label), backup.start_lsn, "", 0.0, 0)
        if target.kind == "lsn":
            return cp_restore(base, self.root, dest, bindir, target_lsn=target.value)
        return cp_restore(base, self.root, dest, bindir, target_time=target.value)
