"""Finding the PostgreSQL server binaries and running them as the right OS user."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .errors import ClusterError

SERVER_TOOLS = ("initdb", "pg_ctl", "pg_basebackup", "postgres", "pg_rewind")

INSTALL_HINT = (
    "install the PostgreSQL server (Debian/Ubuntu: `apt-get install postgresql`; "
    "`make setup` does it for you), or set PGSESSIONS_PG_BINDIR to the directory "
    "holding initdb and pg_ctl"
)


def _has_tools(path: str) -> bool:
    return all(os.access(os.path.join(path, t), os.X_OK) for t in ("initdb", "pg_ctl", "postgres"))


def find_bindir(explicit: str | None = None) -> Path:
    """The directory of initdb/pg_ctl/postgres: explicit, $PGSESSIONS_PG_BINDIR,
    `pg_config --bindir`, or the newest /usr/lib/postgresql/*/bin."""
    candidates: list[str] = []
    explicit = explicit or os.environ.get("PGSESSIONS_PG_BINDIR")
    if explicit:
        if not _has_tools(explicit):
            raise ClusterError(
                f"no PostgreSQL server binaries in {explicit} (initdb, pg_ctl, postgres); "
                + INSTALL_HINT
            )
        return Path(explicit)
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            candidates.append(out)
        except (subprocess.SubprocessError, OSError):
            pass

    def version_key(p: str) -> float:
        try:
            return float(Path(p).parent.name)
        except ValueError:
            return 0.0

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key, reverse=True)
    candidates += ["/usr/local/pgsql/bin", "/usr/pgsql/bin"]
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).parent))
    for c in candidates:
        if c and _has_tools(c):
            return Path(c)
    raise ClusterError(
        "no PostgreSQL server binaries found (looked in "
        + ", ".join(dict.fromkeys(c for c in candidates if c))
        + "); "
        + INSTALL_HINT
    )


def server_user() -> pwd.struct_passwd | None:
    """The OS user servers run as: None for the current user, `postgres` when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise ClusterError(
            "running as root, and PostgreSQL refuses to run as root: no `postgres` OS user "
            "exists to run the servers (create one, or run as an ordinary user)"
        ) from None


def run_as_server_user(
    argv: Sequence[str],
    *,
    timeout: float = 60.0,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a server tool as the server user; raise ClusterError with its output on failure."""
    user = server_user()
    cmd = list(argv)
    if user is not None:
        cmd = ["runuser", "-u", user.pw_name, "--", *cmd]
    full_env = {**os.environ, "LC_ALL": "C", "LANG": "C", **(env or {})}
    full_env.pop("PGPASSWORD", None)
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
            stdin=subprocess.DEVNULL,
            cwd="/",
        )
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"{Path(argv[0]).name} did not finish within {timeout:.0f}s") from exc
    if check and proc.returncode != 0:
        raise ClusterError(
            f"{Path(argv[0]).name} failed (exit {proc.returncode}): "
            + (proc.stderr.strip() or proc.stdout.strip())[-2000:]
        )
    return proc


def chown_to_server_user(path: Path) -> None:
    user = server_user()
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)
