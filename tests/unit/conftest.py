"""The unit tier: pure decisions and house rules, no PostgreSQL (`make check` runs it alone
in seconds). Starting a server from here is a mistake the tier refuses."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pgsessions.devcluster import LocalCluster


@pytest.fixture(autouse=True)
def _no_servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(self: LocalCluster) -> LocalCluster:
        raise AssertionError("a unit test started a PostgreSQL cluster: move it to integration/")

    monkeypatch.setattr(LocalCluster, "start", refuse)
    yield
