"""The framework examples (examples/): real apps started as servers, driven over HTTP.

Flask serves sync views from a threaded server (``Runner.run_sync`` in request threads);
FastAPI serves async endpoints on the router's own loop and a sync ``def`` endpoint from a
worker thread. Several requests run at once; every turn must be stored once, in order.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pgsessions.devcluster import LocalCluster
from pgsessions.devcluster.ports import pick_free_port
from tests.helpers import poll, texts

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def _post(url: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).close()
    except urllib.error.HTTPError:
        return True  # it answers, with an error status
    except OSError:
        return False
    return True


def _serve(cmd: list[str], port: int, cluster: LocalCluster, schema: str) -> Iterator[str]:
    env = dict(os.environ)
    env.update(
        PGSESSIONS_HOSTS=",".join(cluster.dsns()),
        PGSESSIONS_SCHEMA=schema,
        PGSESSIONS_CHECK_INTERVAL="0.1",
        PGSESSIONS_EXAMPLE_MODEL="scripted",
        PYTHONPATH=str(EXAMPLES),
    )
    proc = subprocess.Popen(
        cmd, cwd=EXAMPLES, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        if not poll(lambda: proc.poll() is not None or _answers(f"{base}/history/x"), 60):
            pytest.fail("the app did not start within 60 s")
        if proc.poll() is not None:
            pytest.fail(f"the app exited: {proc.stdout.read() if proc.stdout else ''}")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _conversations(base: str, path: str, sessions: int, turns: int) -> None:
    """``sessions`` conversations at once, ``turns`` turns each, through ``path``."""

    def talk(i: int) -> None:
        for j in range(turns):
            reply = _post(f"{base}{path}/conv-{i}", {"message": f"m{i}-{j}"})
            assert reply["reply"] == f"re: m{i}-{j}"
            assert reply["consistency_token"]

    with concurrent.futures.ThreadPoolExecutor(sessions) as pool:
        for f in [pool.submit(talk, i) for i in range(sessions)]:
            f.result(timeout=120)
    for i in range(sessions):
        got = texts(_get(f"{base}/history/conv-{i}")["items"])
        assert got == [x for j in range(turns) for x in (f"m{i}-{j}", f"re: m{i}-{j}")]


@pytest.fixture
def flask_app(cluster: LocalCluster, schema: str) -> Iterator[str]:
    port = pick_free_port()
    cmd = [sys.executable, "-m", "flask", "--app", "flask_app.py", "run", "--with-threads"]
    yield from _serve([*cmd, "--port", str(port)], port, cluster, schema)


@pytest.fixture
def fastapi_app(cluster: LocalCluster, schema: str) -> Iterator[str]:
    port = pick_free_port()
    cmd = [sys.executable, "-m", "uvicorn", "fastapi_app:app", "--port", str(port)]
    yield from _serve(cmd, port, cluster, schema)


@pytest.mark.owner_sql  # the app migrates its schema itself
def test_flask_threaded_views_run_agents(flask_app: str) -> None:
    _conversations(flask_app, "/chat", sessions=8, turns=4)


@pytest.mark.owner_sql
def test_fastapi_async_and_sync_endpoints(fastapi_app: str) -> None:
    _conversations(fastapi_app, "/chat", sessions=8, turns=3)

    # the sync endpoint continues the same conversations from worker threads
    def talk(i: int) -> None:
        reply = _post(f"{fastapi_app}/sync-chat/conv-{i}", {"message": f"sync{i}"})
        assert reply["reply"] == f"re: sync{i}"

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for f in [pool.submit(talk, i) for i in range(8)]:
            f.result(timeout=120)
    for i in range(8):
        got = texts(_get(f"{fastapi_app}/history/conv-{i}")["items"])
        assert got[-2:] == [f"sync{i}", f"re: sync{i}"] and len(got) == 8
