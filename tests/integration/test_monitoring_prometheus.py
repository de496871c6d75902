"""A real Prometheus (Debian's package, installed by the fixture if missing) scrapes us."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from pgsessions.devcluster import LocalCluster
from pgsessions.devcluster.ports import pick_free_port
from pgsessions.monitoring import MetricsServer, serve
from pgsessions.router import RouterConfig, SessionRouter
from tests.helpers import apoll
from tests.monitoring_support import prometheus_bin_fixture  # noqa: F401 - fixture

DEPLOY = Path(__file__).resolve().parent.parent.parent / "deploy"


class Prometheus:
    def __init__(self, binary: str, workdir: Path, target: str) -> None:
        # the shipped scrape configuration, with this test's target and a 1 s interval
        config = (DEPLOY / "prometheus.yml").read_text()
        for old, new in (
            ('["demo:9464"]', f'["{target}"]'),
            ("scrape_interval: 5s", "scrape_interval: 1s"),
            ("evaluation_interval: 5s", "evaluation_interval: 1s"),
            ("scrape_timeout: 4s", "scrape_timeout: 1s"),
        ):
            assert old in config, f"deploy/prometheus.yml no longer has {old!r}"
            config = config.replace(old, new)
        (workdir / "prometheus.yml").write_text(config)
        shutil.copy(DEPLOY / "alerts.yml", workdir / "alerts.yml")
        self.proc: subprocess.Popen[bytes] | None = None
        for _ in range(5):  # a port picked free can be taken a moment later: try another
            self.port = pick_free_port()
            log = open(workdir / "prometheus.log", "wb")  # closed in stop()
            self.log = log
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={workdir / 'prometheus.yml'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            if self._wait_ready(workdir):
                return
            self.stop()
        pytest.fail(f"prometheus did not start:\n{(workdir / 'prometheus.log').read_text()}")

    def _wait_ready(self, workdir: Path) -> bool:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture
async def prom_router(cluster: LocalCluster, schema: str) -> AsyncIterator[SessionRouter]:
    config = RouterConfig(hosts=cluster.dsns(), schema=schema, name="prom", check_interval=0.1)
    async with SessionRouter(config) as r:
        yield r


@pytest.fixture
def endpoint(prom_router: SessionRouter) -> Iterator[MetricsServer]:
    from prometheus_client import CollectorRegistry

    with serve(prom_router, port=0, registry=CollectorRegistry()) as server:
        yield server


async def test_prometheus_scrapes_lag_per_replica(
    prometheus_bin: tuple[str, str],
    endpoint: MetricsServer,
    cluster: LocalCluster,
    tmp_path: Path,
) -> None:
    prom = await asyncio.to_thread(
        Prometheus, prometheus_bin[0], tmp_path, f"127.0.0.1:{endpoint.port}"
    )
    try:
        replicas = {n.host for n in cluster.replicas}
        found: list[Any] = []

        async def lag_scraped() -> bool:
            data = await asyncio.to_thread(
                prom.api, "query", query='pgsessions_replication_lag_bytes{router="prom"}'
            )
            found[:] = data["result"]
            return {r["metric"]["host"] for r in found} == replicas

        assert await apoll(lag_scraped, within=30, interval=0.25), found
        for r in found:
            assert r["metric"]["job"] == "pgsessions"
            assert float(r["value"][1]) >= 0

        targets = await asyncio.to_thread(prom.api, "targets")
        assert [t["health"] for t in targets["activeTargets"]] == ["up"]
        up = await asyncio.to_thread(prom.api, "query", query="pgsessions_host_up")
        assert len(up["result"]) == 3
        # a SessionRouter's series have no shard label: the dashboard's "All" (.*) keeps them
        assert all("shard" not in r["metric"] for r in up["result"])
        up = await asyncio.to_thread(prom.api, "query", query='pgsessions_host_up{shard=~".*"}')
        assert len(up["result"]) == 3

        # the alert rules are loaded and evaluate without error
        async def rules_evaluated() -> bool:
            groups = (await asyncio.to_thread(prom.api, "rules"))["groups"]
            rules = [r for g in groups for r in g["rules"]]
            return len(rules) == 11 and all(
                r["health"] == "ok" and r["lastEvaluation"][:4] != "0001" for r in rules
            )

        assert await apoll(rules_evaluated, within=20, interval=0.25)
        firing = (await asyncio.to_thread(prom.api, "alerts"))["alerts"]
        assert [a for a in firing if a["state"] == "firing"] == [], firing

        # every dashboard query runs on real data
        dash = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
        for panel in dash["panels"]:
            for target in panel["targets"]:
                expr = (
                    target["expr"]
                    .replace("$__rate_interval", "1m")
                    .replace("$__range", "5m")
                    .replace("$instance", ".*")
                    .replace("$router", ".*")
                    .replace("$shard", ".*")
                )
                await asyncio.to_thread(prom.api, "query", query=expr)
    finally:
        await asyncio.to_thread(prom.stop)
