"""Small helpers shared by tests: polling with a deadline, process checks, and the items and
run results sessions are fed."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

from agents.result import RunResultBase
from agents.run_context import RunContextWrapper
from agents.usage import Usage

if TYPE_CHECKING:
    from pgsessions.devcluster.patroni import PatroniCluster


def poll(condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05) -> bool:
    """True once ``condition()`` holds, False if it still does not at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


async def apoll(
    condition: Callable[[], Awaitable[bool]], within: float = 10.0, interval: float = 0.05
) -> bool:
    """Async :func:`poll`: True once ``await condition()`` holds within ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        if await condition():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)


def processes_under(path: Path) -> list[int]:
    """PIDs of processes whose command line mentions ``path`` (e.g. a postmaster's -D)."""
    needle = str(path).encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmd:
            pids.append(int(entry))
    return pids


def children_of(pids: list[int]) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid in pids:
            out.append(int(entry))
    return out


def cluster_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``pgsessions cluster ARGS...`` in a subprocess (stdin closed, output captured)."""
    return subprocess.run(
        [sys.executable, "-m", "pgsessions", "cluster", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def cluster_state_dir(prefix: str) -> Path:
    """A not-yet-existing ``state`` directory under a fresh temporary directory that the
    server user can traverse (for ``pgsessions cluster up --dir``)."""
    parent = Path(tempfile.mkdtemp(prefix=prefix))
    parent.chmod(0o755)
    return parent / "state"


@contextmanager
def running_patroni() -> Iterator[PatroniCluster]:
    """A fresh Patroni cluster (etcd + 3 members, synchronous_mode, fsync off), stopped after."""
    from pgsessions.devcluster.patroni import PatroniCluster

    pc = PatroniCluster(3, fsync=False).start()
    try:
        yield pc
    finally:
        pc.stop()


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def run_result(tokens: int) -> RunResultBase:
    """What ``store_run_usage`` reads from a run: its context (usage) and last agent."""
    usage = Usage(requests=1, input_tokens=tokens, output_tokens=1, total_tokens=tokens + 1)
    wrapper = RunContextWrapper(context=None, usage=usage)
    return cast(RunResultBase, SimpleNamespace(context_wrapper=wrapper, last_agent=None))


def text_of(item: Any) -> str:
    """The text of a user or assistant message item ('' for other items)."""
    content = item.get("content") if isinstance(item, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def texts(items: Any) -> list[str]:
    return [text_of(i) for i in items if text_of(i)]
