"""A recovery target (an LSN or a time) and how each restore path spells it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TargetKind = Literal["lsn", "time"]


@dataclass(frozen=True)
class Target:
    """Where recovery stops.

    ``lsn`` stops before the first record at or after it (exclusive: a commit acknowledged
    before the LSN was read is in, a transaction begun after is not); ``time`` stops after the
    last commit at or before it.
    """

    kind: TargetKind
    value: str

    def __post_init__(self) -> None:
        if self.kind not in ("lsn", "time"):
            raise ValueError(f"a target is an lsn or a time, not {self.kind!r}")
        if not self.value:
            raise ValueError("a target needs a value")

    def recovery_lines(self) -> list[str]:
        """postgresql.conf recovery settings (the plain archive writes them itself)."""
        quoted = "'" + self.value.replace("'", "''") + "'"
        if self.kind == "lsn":
            return [f"recovery_target_lsn = {quoted}", "recovery_target_inclusive = off"]
        return [f"recovery_target_time = {quoted}"]

    def pgbackrest_args(self) -> list[str]:
        """``pgbackrest restore`` options: the same stop, then promote, on this timeline."""
        args = [f"--type={self.kind}", f"--target={self.value}"]
        if self.kind == "lsn":
            args.append("--target-exclusive")
        return [*args, "--target-action=promote", "--target-timeline=current"]

    def barman_args(self) -> list[str]:
        """``barman recover`` options for the same stop."""
        if self.kind == "lsn":
            return [f"--target-lsn={self.value}", "--exclusive", "--target-action=promote"]
        return [f"--target-time={self.value}", "--target-action=promote"]
