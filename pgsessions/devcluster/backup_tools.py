"""Which backup tool: ``--backup TOOL[=DIR]`` and the tool of a name (the implementations
import the interface in backups.py; this module imports them)."""

from __future__ import annotations

from pathlib import Path

from .backups import TOOLS, BackupTool, CpArchive, ToolName
from .barman import Barman
from .errors import ClusterError
from .pgbackrest import PgBackRest


def parse_backup_arg(value: str, default_parent: Path) -> tuple[ToolName, Path]:
    """``--backup TOOL[=DIR]``: the tool and its repository (``default_parent/TOOL`` when no
    DIR is given)."""
    name, sep, where = value.partition("=")
    if name not in ("pgbackrest", "barman"):
        raise ClusterError(f"--backup: pgbackrest or barman, not {name!r}")
    if sep and not where:
        raise ClusterError(f"--backup {name}=: give a directory after '='")
    tool: ToolName = "pgbackrest" if name == "pgbackrest" else "barman"
    return tool, Path(where).resolve() if where else Path(default_parent).resolve() / name


def make_tool(name: str, root: Path) -> BackupTool:
    """The tool called ``name`` with its repository in ``root``."""
    if name == "cp":
        return CpArchive(root)
    if name == "pgbackrest":
        return PgBackRest(root)
    if name == "barman":
        return Barman(root)
    raise ClusterError(f"unknown backup tool {name!r} (one of {', '.join(TOOLS)})")
