"""No accidental cluster: production commands need hosts or an explicit --local, and the
library's runtime path imports none of the tools around it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pgsessions.cli.common import NoHostsError, command_hosts, given_hosts
from tests.helpers import processes_under


def _env_without_hosts(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PGSESSIONS_HOSTS"}
    env["PGSESSIONS_CLUSTER_DIR"] = str(tmp_path / "cluster")
    return env


@pytest.mark.parametrize(
    "command",
    [
        "migrate",
        "status",
        "serve-metrics",
        "export",
        "import --from-sqlite x.db",
        "usage",
        "prune --older-than 30d",
    ],
)
def test_production_command_without_hosts_fails_and_starts_nothing(
    command: str, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pgsessions", *command.split()],
        cwd=tmp_path,
        env=_env_without_hosts(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0, done.stdout
    for word in ("--hosts", "PGSESSIONS_HOSTS", "--local"):
        assert word in done.stderr, done.stderr
    assert not (tmp_path / "cluster").exists()
    assert not (tmp_path / ".pgsessions").exists()
    assert processes_under(tmp_path) == []


def test_hosts_come_from_the_flag_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGSESSIONS_HOSTS", "postgresql://a@h1/db,postgresql://a@h2/db")
    assert given_hosts(["postgresql://b@h3/db"]) == ["postgresql://b@h3/db"]
    with command_hosts("migrate", None, local=False) as hosts:
        assert hosts == ["postgresql://a@h1/db", "postgresql://a@h2/db"]
    monkeypatch.delenv("PGSESSIONS_HOSTS")
    assert given_hosts(None) is None
    with pytest.raises(NoHostsError, match="--local"), command_hosts("status", None, local=False):
        pass


def test_runtime_import_path_loads_no_tools() -> None:
    code = (
        "import sys, json\n"
        "import pgsessions.router, pgsessions.sessions, pgsessions.monitoring\n"
        "tools = ('pgsessions.devcluster', 'pgsessions.drills', 'pgsessions.demo')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(tools))))\n"
        "print(json.dumps('pgsessions.router.session_router' in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    loaded, core_loaded = done.stdout.splitlines()
    assert json.loads(core_loaded) is True  # the imports above really ran
    assert json.loads(loaded) == []


def test_run_on_hosts_turns_failures_into_one_line_and_an_exit_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from pgsessions.cli.common import run_on_hosts
    from pgsessions.errors import NoPrimaryError

    monkeypatch.delenv("PGSESSIONS_HOSTS", raising=False)
    nothing = argparse.Namespace(hosts=None, local=False)
    some = argparse.Namespace(hosts=["postgresql://u:secret@h1/db"], local=False)

    async def ok(hosts: list[str]) -> int:
        assert hosts == ["postgresql://u:secret@h1/db"]
        return 0

    async def bad_input(hosts: list[str]) -> int:
        raise ValueError("--top must be positive")

    async def no_primary(hosts: list[str]) -> int:
        raise NoPrimaryError("no writable primary", {"h1:5432": "down"})

    assert run_on_hosts("usage", nothing, ok) == 2
    err = capsys.readouterr().err
    assert err.startswith("pgsessions usage: no servers given") and err.count("pgsessions") == 1
    assert run_on_hosts("usage", some, ok) == 0
    assert run_on_hosts("usage", some, bad_input) == 2
    assert capsys.readouterr().err == "pgsessions usage: --top must be positive\n"
    assert run_on_hosts("prune", some, no_primary) == 1
    assert capsys.readouterr().err.startswith("pgsessions prune: no writable primary")


def test_every_command_module_is_in_the_static_table() -> None:
    """A command module that fails to import breaks `pgsessions` loudly (no silent skip):
    the table imports them all, and every module of pgsessions/cli/ is a command or shared."""
    from pathlib import Path

    import pgsessions.cli as cli

    listed = {m.__name__.rsplit(".", 1)[1] for m, _ in cli.COMMANDS}
    files = {p.stem for p in Path(cli.__file__).parent.glob("*.py")}
    assert files - listed == {"__init__", "__main__", "common", "progress"}
    names = set(cli.build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert {"cluster", "migrate", "status", "demo", "drill", "bench", "serve-metrics"} <= names
    assert {"export", "import", "usage", "prune"} <= names
