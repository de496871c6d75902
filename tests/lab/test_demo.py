"""`pgsessions demo` end to end: local cluster started and stopped, agents through Runner."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pgsessions.cli import build_parser
from tests.helpers import processes_under


def test_demo_command_is_wired() -> None:
    args = build_parser().parse_args(["demo", "--duration", "3", "--sessions", "5"])
    assert callable(args.func)
    assert args.duration == 3 and args.sessions == 5


@pytest.mark.fault
def test_demo_runs_reads_replicas_and_usage_matches() -> None:
    # the servers run as another user: the directory must be reachable by it (under /tmp)
    base = Path(tempfile.mkdtemp(prefix="pgsessions-demo-test-"))
    base.chmod(0o755)
    try:
        _run_demo(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _run_demo(base: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PGSESSIONS_HOSTS"}
    env["PGSESSIONS_CLUSTER_DIR"] = str(base / "cluster")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pgsessions",
            "demo",
            "--duration",
            "5",
            "--sessions",
            "30",
            "--think",
            "0.3",
            "--metrics-port",
            "0",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    # non-terminal output: plain progress lines, no screen control codes
    assert "turns/s" in proc.stderr and "\x1b[" not in proc.stderr
    assert "metrics: http://127.0.0.1:" in proc.stderr
    assert summary["errors"] == 0, summary["error_kinds"]
    assert summary["turns"] > 0
    assert summary["reads"]["by_role"].get("replica", 0) > 0
    assert summary["usage"]["match"], summary["usage"]
    assert summary["usage"]["usage_logs"]["runs"] == summary["turns"]
    assert summary["latency"]["get_items"]["p50_ms"] is not None
    assert "local cluster stopped" in proc.stderr
    assert not processes_under(base / "cluster")
