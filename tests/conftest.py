"""Shared fixtures: one real replicated cluster for the suite, a clean schema per test, and
fresh clusters for the tests that break theirs."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from pgsessions.devcluster import LocalCluster
from pgsessions.router import RouterConfig, SessionRouter


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    """Primary + 2 async streaming replicas shared by the suite: keep it healthy."""
    c = LocalCluster(replicas=2, fsync=False)
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def cluster_factory() -> Iterator[Callable[..., LocalCluster]]:
    """Start clusters of the test's own (for fault tests); all are stopped at test end."""
    made: list[LocalCluster] = []

    def make(**kwargs: Any) -> LocalCluster:
        kwargs.setdefault("fsync", False)
        c = LocalCluster(**kwargs)
        made.append(c)
        c.start()
        return c

    try:
        yield make
    finally:
        for c in made:
            c.stop()


@pytest.fixture
def schema(cluster: LocalCluster) -> Iterator[str]:
    """A schema name of this test's own; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    cluster.primary.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def router_config(cluster: LocalCluster, schema: str) -> RouterConfig:
    return RouterConfig(hosts=cluster.dsns(), schema=schema, check_interval=0.1)


@pytest.fixture
async def router(router_config: RouterConfig) -> AsyncIterator[SessionRouter]:
    async with SessionRouter(router_config) as r:
        yield r
