"""Continuous archiving and point-in-time recovery for the local cluster.

Layout of an archive directory::

    DIR/wal/                  WAL segments copied by the primary's archive_command
    DIR/base/<UTC stamp>/     base backups (pg_basebackup, plain format, WAL from the archive)
    DIR/archive.json          the backups taken: path, start LSN, start time

:func:`restore` builds a new server from a base backup plus the archived WAL, stopped at a
target LSN or time, and promotes it. This is what pgBackRest or WAL-G do in production; here
it is the plain PostgreSQL mechanism (archive_command, restore_command, recovery targets).
"""

from __future__ import annotations

import json
import re
import shlex
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .binaries import chown_to_server_user, run_as_server_user
from .cluster import LocalCluster, wait_for
from .errors import ClusterError
from .node import Node
from .restored import Restored, conf_quote, new_restore_node, start_recovery
from .target import Target

ARCHIVE_STATE = "archive.json"


def archive_settings(archive_dir: Path) -> dict[str, str]:
    """postgresql.conf settings that archive every finished WAL segment into ``archive_dir``.

    The command never overwrites a segment already archived (``test ! -f``), as the
    PostgreSQL documentation requires of an archive_command.
    """
    wal = shlex.quote(str(Path(archive_dir).resolve() / "wal"))
    command = f"test ! -f {wal}/%f && cp %p {wal}/%f"
    return {"archive_mode": "on", "archive_command": conf_quote(command)}


def prepare_archive(archive_dir: Path) -> Path:
    """Create ``archive_dir`` (with ``wal/`` and ``base/``) owned by the server user."""
    root = Path(archive_dir).resolve()
    if root.exists() and any(root.iterdir()) and not (root / ARCHIVE_STATE).exists():
        if not (root / "wal").is_dir():
            raise ClusterError(f"{root} is not empty and holds no pgsessions archive")
    for path in (root, root / "wal", root / "base"):
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o755 if path == root else 0o700)
        chown_to_server_user(path)
    if not (root / ARCHIVE_STATE).exists():
        _save(root, {"backups": []})
    return root


def _save(root: Path, state: dict[str, Any]) -> None:
    tmp = root / (ARCHIVE_STATE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(root / ARCHIVE_STATE)


def _load(root: Path) -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads((root / ARCHIVE_STATE).read_text())
    except FileNotFoundError:
        raise ClusterError(
            f"no archive in {root} (`pgsessions cluster up --archive DIR`)"
        ) from None
    return state


@dataclass(frozen=True)
class BaseBackup:
    """A base backup in an archive: where, from which WAL position, when, how long it took."""

    path: str
    start_lsn: str
    started_at: str
    seconds: float
    bytes: int


def base_backup(primary: Node, archive_dir: Path, bindir: Path) -> BaseBackup:
    """Take an online base backup of ``primary`` into ``archive_dir/base/<stamp>``.

    ``--wal-method=none``: the WAL the backup needs comes from the archive (the server waits
    until it is archived before the backup ends), as with pgBackRest or WAL-G.
    """
    root = Path(archive_dir).resolve()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    dest = root / "base" / stamp
    t0 = time.monotonic()
    run_as_server_user(
        [
            str(bindir / "pg_basebackup"),
            "-D",
            str(dest),
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            "postgres",
            "--wal-method=none",
            "--checkpoint=fast",
            "--no-sync",
        ],
        timeout=600,
    )
    label = (dest / "backup_label").read_text()
    m = re.search(r"START WAL LOCATION: ([0-9A-F]+/[0-9A-F]+)", label)
    when = re.search(r"START TIME: (.+)", label)
    if not m:
        raise ClusterError(f"no START WAL LOCATION in {dest}/backup_label")
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    backup = BaseBackup(
        str(dest), m.group(1), when.group(1).strip() if when else "", time.monotonic() - t0, size
    )
    state = _load(root)
    state["backups"].append(asdict(backup))
    _save(root, state)
    return backup


def start_archiving(cluster: LocalCluster, archive_dir: Path, *, new: bool = True) -> BaseBackup:
    """Check that ``cluster``'s primary archives into ``archive_dir`` and take a base backup;
    with ``new=False`` (the cluster was already running) the newest recorded one is kept."""
    wal = str(Path(archive_dir).resolve() / "wal")
    command = cluster.primary.execute("SHOW archive_command")[0][0]
    mode = cluster.primary.execute("SHOW archive_mode")[0][0]
    if mode == "off" or wal not in str(command):
        raise ClusterError(
            f"the cluster in {cluster.base_dir} runs without archiving to {archive_dir}: "
            "`pgsessions cluster down` it first, then `cluster up --archive DIR`"
        )
    taken = backups(archive_dir)
    return (
        taken[-1]
        if taken and not new
        else base_backup(cluster.primary, archive_dir, cluster.bindir)
    )


def backups(archive_dir: Path) -> list[BaseBackup]:
    """The base backups recorded in ``archive_dir``, oldest first."""
    return [BaseBackup(**b) for b in _load(Path(archive_dir).resolve())["backups"]]


def archive_now(primary: Node, timeout: float = 60.0) -> str:
    """Switch to a new WAL segment and wait until the finished one is archived; returns the
    switch LSN (everything before it is in the archive)."""
    lsn, walfile = primary.execute(
        "SELECT l::text, pg_walfile_name(l) FROM pg_switch_wal() AS l", timeout=30
    )[0]

    def archived() -> bool:
        row = primary.execute("SELECT last_archived_wal, last_failed_wal FROM pg_stat_archiver")[0]
        return row[0] is not None and str(row[0]) >= str(walfile)

    wait_for(archived, timeout, f"WAL segment {walfile} to be archived")
    return str(lsn)


def restore(
    backup: BaseBackup,
    archive_dir: Path,
    dest: Path,
    bindir: Path,
    *,
    target_lsn: str | None = None,
    target_time: str | None = None,
    timeout: float = 300.0,
) -> Restored:
    """A new server in ``dest`` from ``backup`` plus the archived WAL, recovered to the target
    and promoted (``recovery_target_action = promote``).

    ``target_lsn`` stops before the first WAL record at or after it (inclusive off: a commit
    acknowledged before the LSN was read is in, a transaction begun after is not);
    ``target_time`` stops after the last commit at or before it. Raises ClusterError with the
    server log when recovery cannot reach the target.
    """
    if (target_lsn is None) == (target_time is None):
        raise ValueError("give exactly one of target_lsn and target_time")
    root = Path(archive_dir).resolve()
    node = new_restore_node(dest)
    t0 = time.monotonic()
    run_as_server_user(["cp", "-a", backup.path, str(node.data_dir)], timeout=600)
    for stale in ("postmaster.pid", "standby.signal", "postgresql.auto.conf"):
        (node.data_dir / stale).unlink(missing_ok=True)
    target = (
        Target("lsn", target_lsn) if target_lsn is not None else Target("time", str(target_time))
    )
    return start_recovery(
        node,
        bindir,
        recovery=cp_recovery_lines(root / "wal", target),
        start_lsn=backup.start_lsn,
        started=t0,
        timeout=timeout,
    )


def cp_recovery_lines(wal_dir: Path, target: Target) -> list[str]:
    """postgresql.conf lines that recover from the plain archive ``wal_dir`` to ``target``."""
    wal = shlex.quote(str(wal_dir))
    return [
        f"restore_command = {conf_quote(f'cp {wal}/%f %p')}",
        *target.recovery_lines(),
        "recovery_target_action = 'promote'",
    ]
