"""Helpers of the monitoring tests: scraping an endpoint and reading its samples."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

_install_lock = threading.Lock()


@dataclass
class Scrape:
    text: str
    families: dict[str, tuple[str, list[Sample]]]  # name -> (type, samples)

    def samples(self, name: str, **labels: str) -> list[Sample]:
        """Samples named ``name`` (a series name, e.g. ``x_total`` or ``x_bucket``)."""
        out = []
        for _, samples in self.families.values():
            for s in samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    out.append(s)
        return out

    def value(self, name: str, **labels: str) -> float | None:
        """The one sample's value, None if absent; several matches are summed."""
        found = self.samples(name, **labels)
        return sum(s.value for s in found) if found else None


def scrape_sync(url: str, timeout: float = 5.0) -> Scrape:
    with urllib.request.urlopen(f"{url}/metrics", timeout=timeout) as resp:
        text = resp.read().decode()
    families = {f.name: (f.type, list(f.samples)) for f in text_string_to_metric_families(text)}
    return Scrape(text, families)


async def scrape(url: str) -> Scrape:
    return await asyncio.to_thread(scrape_sync, url)


def get_sync(url: str, timeout: float = 5.0) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


async def healthz(url: str) -> tuple[int, dict[str, object]]:
    status, body, _ = await asyncio.to_thread(get_sync, f"{url}/healthz")
    return status, json.loads(body)


def _install_prometheus() -> str | None:
    """apt-get install Debian's prometheus package; None on success, else why not."""
    if os.geteuid() != 0 and shutil.which("sudo") is None:
        return "not root and no sudo"
    if shutil.which("apt-get") is None:
        return "no apt-get on this system"
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", "prometheus"]
    proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:  # stale package lists: update once and try again
        subprocess.run(
            [*sudo, "apt-get", "update", "-q"], capture_output=True, env=env, timeout=600
        )
        proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        return f"apt-get install prometheus failed: {proc.stderr.strip()[-500:]}"
    return None


@pytest.fixture(scope="session", name="prometheus_bin")
def prometheus_bin_fixture() -> tuple[str, str]:
    """Paths of ``prometheus`` and ``promtool``, installing Debian's package once if missing.

    Only the binaries are used: the package's own service is never relied on.
    """
    with _install_lock:
        prom, tool = shutil.which("prometheus"), shutil.which("promtool")
        if prom is None or tool is None:
            why = _install_prometheus()
            prom, tool = shutil.which("prometheus"), shutil.which("promtool")
            if prom is None or tool is None:
                pytest.skip(f"Prometheus is not installed and could not be: {why}")
    return prom, tool


@pytest.fixture(scope="session", name="promtool")
def promtool_fixture(prometheus_bin: tuple[str, str]) -> str:
    return prometheus_bin[1]
