"""A server recovered from a backup: started on a port of its own, recovered to its target,
promoted, and measured (seconds, WAL files restored, WAL bytes replayed)."""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .binaries import chown_to_server_user, run_as_server_user
from .cluster import NODE_CONF, wait_for
from .errors import ClusterError
from .node import Node
from .ports import pick_free_port


@dataclass
class Restored:
    """A server restored from an archive: its node, and what the restore took."""

    node: Node
    seconds: float
    wal_files: int
    wal_bytes: int | None
    stop_message: str | None

    @property
    def dsn(self) -> str:
        return self.node.dsn


def conf_quote(value: str) -> str:
    """``value`` as a postgresql.conf string literal."""
    return "'" + value.replace("'", "''") + "'"


def new_restore_node(dest: Path) -> Node:
    """A node named ``restored`` in ``dest`` (created, owned by the server user), no data yet."""
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    dest.chmod(0o755)
    chown_to_server_user(dest)
    node = Node(name="restored", port=pick_free_port(), base_dir=dest)
    node.dir.mkdir(exist_ok=True)
    node.dir.chmod(0o700)
    chown_to_server_user(node.dir)
    return node


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    chown_to_server_user(path)


def _pg_ctl(bindir: Path, args: list[str], timeout: float) -> Any:
    return run_as_server_user([str(bindir / "pg_ctl"), *args], timeout=timeout, check=False)


def start_recovery(
    node: Node,
    bindir: Path,
    *,
    recovery: list[str],
    start_lsn: str,
    started: float,
    timeout: float = 300.0,
) -> Restored:
    """Start ``node``'s restored data directory in targeted recovery and wait for promotion.

    ``recovery`` are the postgresql.conf lines the restore needs beyond what a tool already
    wrote (restore_command and targets for the plain archive; nothing for pgBackRest and
    Barman, which write postgresql.auto.conf). ``started`` is the monotonic time the restore
    began (the copy counts). Only the log written by this start is measured.
    """
    offset = node.log_path.stat().st_size if node.log_path.exists() else 0
    for attempt in range(5):
        lines = [
            f"port = {node.port}",
            "cluster_name = 'restored'",
            "synchronous_standby_names = ''",
            "archive_mode = off",  # a restored copy must not write into the source's archive
            *recovery,
            "log_min_messages = log",  # "restored log file", "recovery stopping", "redo done"
        ]
        _write(node.data_dir / NODE_CONF, "\n".join(lines) + "\n")
        _write(node.data_dir / "recovery.signal", "")
        (node.data_dir / "standby.signal").unlink(missing_ok=True)
        proc = _pg_ctl(
            bindir,
            ["start", "-D", str(node.data_dir), "-l", str(node.log_path), "-w", "-t", "600"],
            timeout=timeout + 30,
        )
        log = node.log_path.read_text(errors="replace")[offset:] if node.log_path.exists() else ""
        if proc.returncode == 0:
            break
        if "could not bind" in log and attempt < 4:
            node.port = pick_free_port({node.port})
            continue
        raise ClusterError(
            f"the restored server did not start: {proc.stderr.strip()}\n--- log ---\n"
            + "\n".join(log.splitlines()[-30:])
        )
    try:
        wait_for(lambda: node.role() == "primary", timeout, "the restored server to promote")
    except ClusterError as exc:
        raise ClusterError(f"{exc}\n--- log ---\n{node.log_tail()}") from None
    seconds = time.monotonic() - started
    log = node.log_path.read_text(errors="replace")[offset:]
    files, stop, redo = parse_recovery_log(log)
    wal_bytes = None
    if redo:
        sql = "SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)"
        wal_bytes = int(node.execute(sql, (redo, start_lsn))[0][0])
    return Restored(node, seconds, files, wal_bytes, stop)


def parse_recovery_log(log: str) -> tuple[int, str | None, str | None]:
    """From a recovering server's log: WAL files restored, the stop message, the redo end."""
    files = len(re.findall(r"restored log file", log))
    stop = re.search(r"recovery stopping [^\n]*", log)
    redo = re.search(r"redo done at ([0-9A-F]+/[0-9A-F]+)", log)
    return files, stop.group(0) if stop else None, redo.group(1) if redo else None


def stop_node_dir(node: Node, bindir: Path) -> None:
    """Stop the server in ``node``'s data directory (fast, then immediate)."""
    if node.is_running():
        _pg_ctl(bindir, ["stop", "-D", str(node.data_dir), "-m", "fast", "-w"], 90)
    if node.is_running():
        _pg_ctl(bindir, ["stop", "-D", str(node.data_dir), "-m", "immediate", "-w"], 30)


def stop_restored(restored: Restored, bindir: Path, *, delete: bool = True) -> None:
    """Stop a restored server (and delete its directory)."""
    stop_node_dir(restored.node, bindir)
    if delete:
        shutil.rmtree(restored.node.base_dir, ignore_errors=True)
