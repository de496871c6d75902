"""Patroni's view as a second opinion (RouterConfig.patroni): the pure decisions on plain
``/cluster`` documents, the setting, and on a real Patroni cluster a replica whose Patroni
died leaving it out of rotation while its SQL probe still looks healthy."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from pgsessions import RouterConfig, SessionRouter
from pgsessions.devcluster.patroni import PatroniCluster
from pgsessions.router.dsn import host_label
from pgsessions.router.health import Health
from pgsessions.router.patroni import (
    PatroniSource,
    leader_moved,
    parse_cluster,
    replica_veto,
    veto,
)
from tests.helpers import apoll, running_patroni

HOSTS = ["10.0.0.1:5432", "10.0.0.2:5432", "10.0.0.3:5432"]


def member(n: int, role: str, state: str, lag: Any = 0, tl: int = 2) -> dict[str, Any]:
    return {
        "name": f"m{n}",
        "host": f"10.0.0.{n}",
        "port": 5432,
        "role": role,
        "state": state,
        "lag": lag,
        "timeline": tl,
    }


def doc(*members: dict[str, Any]) -> dict[str, Any]:
    return {"members": list(members), "scope": "s"}


def test_parse_cluster() -> None:
    view = parse_cluster(
        doc(
            member(1, "leader", "running", lag=None),
            member(2, "sync_standby", "streaming"),
            member(3, "replica", "running", lag="unknown"),
        )
    )
    assert view.leader == "10.0.0.1:5432"
    assert view.members["10.0.0.2:5432"].lag == 0 and view.members["10.0.0.2:5432"].timeline == 2
    assert view.members["10.0.0.3:5432"].lag is None  # Patroni says "unknown"
    # a leader still starting is not the leader yet
    assert parse_cluster(doc(member(1, "leader", "starting"))).leader is None
    for bad in (None, [], {"members": "x"}, {"members": [{"role": "leader"}]}):
        with pytest.raises(ValueError):
            parse_cluster(bad)


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (member(2, "replica", "running"), None),
        (member(2, "sync_standby", "streaming"), None),
        (member(2, "replica", "starting"), "patroni: starting"),
        (member(2, "replica", "creating replica"), "patroni: creating replica"),
        (member(2, "replica", "stopped"), "patroni: stopped"),
        (member(2, "replica", "crashed"), "patroni: crashed"),
        (member(2, "replica", "running", lag="unknown"), "patroni: lag unknown"),
        # being promoted: the SQL probe's replay position decides meanwhile
        (member(2, "leader", "running"), None),
    ],
)
def test_replica_veto(row: dict[str, Any], reason: str | None) -> None:
    view = parse_cluster(doc(member(1, "leader", "running"), row))
    assert replica_veto(view, "10.0.0.2:5432", HOSTS) == reason


def test_replica_veto_needs_a_view_that_matches_the_router() -> None:
    view = parse_cluster(doc(member(1, "leader", "running"), member(2, "replica", "starting")))
    assert replica_veto(None, "10.0.0.2:5432", HOSTS) is None  # Patroni did not answer
    # a member Patroni no longer lists (its Patroni died) is unknown: out
    assert replica_veto(view, "10.0.0.3:5432", HOSTS) == "patroni: not a member of the cluster"
    # through bouncers on other ports nothing matches: Patroni's view says nothing
    bouncers = ["10.0.0.1:6432", "10.0.0.2:6432", "10.0.0.3:6432"]
    assert replica_veto(view, "10.0.0.2:6432", bouncers) is None


def test_leader_moved() -> None:
    view = parse_cluster(doc(member(1, "replica", "running"), member(2, "leader", "running")))
    assert leader_moved(view, "10.0.0.1:5432", HOSTS)
    assert leader_moved(view, None, HOSTS)
    assert not leader_moved(view, "10.0.0.2:5432", HOSTS)
    assert not leader_moved(None, "10.0.0.1:5432", HOSTS)
    assert not leader_moved(view, "10.0.0.1:6432", ["10.0.0.1:6432", "10.0.0.2:6432"])


def test_veto_goes_through_hysteresis() -> None:
    h = Health(eligible=True, healthy_since=1.0)
    veto(h, "patroni: starting")
    assert (h.eligible, h.healthy_since, h.ever_unhealthy, h.reason) == (
        False,
        None,
        True,
        "patroni: starting",
    )


def test_config_patroni_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    dsn = "postgresql://app@db1/agents"
    cfg = RouterConfig(hosts=[dsn], patroni="http://db1:8008, http://db2:8008")
    assert cfg.patroni == ("http://db1:8008", "http://db2:8008")
    assert RouterConfig(hosts=[dsn]).patroni == ()
    with pytest.raises(ValueError, match=r"patroni\[0\]: give an http"):
        RouterConfig(hosts=[dsn], patroni=["db1:8008"])
    with pytest.raises(ValueError, match="without credentials") as info:
        RouterConfig(hosts=[dsn], patroni=["http://admin:s3cret@db1:8008"])
    assert "s3cret" not in str(info.value)
    monkeypatch.setenv("PGSESSIONS_HOSTS", dsn)
    monkeypatch.setenv("PGSESSIONS_PATRONI", "http://db1:8008")
    assert RouterConfig.from_env().patroni == ("http://db1:8008",)


async def test_source_asks_the_member_that_answered_last_first() -> None:
    from pgsessions.devcluster.ports import pick_free_port

    asked: list[str] = []
    body = json.dumps(doc(member(1, "leader", "running"), member(2, "replica", "running")))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        dead = f"http://127.0.0.1:{pick_free_port()}"
        live = f"http://127.0.0.1:{server.server_address[1]}"
        assert await PatroniSource([dead], 0.5).fetch() is None
        source = PatroniSource([dead, live], 0.5)
        view = await source.fetch()
        assert view is not None and view.leader == "10.0.0.1:5432"
        assert asked == ["/cluster"]
        await source.fetch()  # the live member first now: one request, no wait on the dead one
        assert source.urls[source._first] == live and asked == ["/cluster", "/cluster"]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def patroni() -> Iterator[PatroniCluster]:
    with running_patroni() as pc:
        yield pc


@pytest.mark.fault
async def test_replica_without_its_patroni_leaves_rotation(patroni: PatroniCluster) -> None:
    leader = patroni.leader()
    assert leader is not None
    victim = next(m for m in patroni.members if m.name != leader.name)
    label = host_label(victim.dsn)
    base = {"hosts": patroni.dsns(), "check_interval": 0.2, "healthy_for": 0.5}
    with_patroni = SessionRouter(RouterConfig(**base, patroni=patroni.rest_urls(), name="p"))
    sql_only = SessionRouter(RouterConfig(**base, name="s"))

    def state(router: SessionRouter) -> Any:
        return next(h for h in router.topology().hosts if h.host == label)

    async with with_patroni, sql_only:

        async def both_eligible() -> bool:
            return state(with_patroni).eligible and state(sql_only).eligible

        assert await apoll(both_eligible, within=30)
        assert with_patroni.topology().primary == host_label(leader.dsn)
        await asyncio.to_thread(patroni.kill_patroni, victim.name)

        async def vetoed() -> bool:  # its member key expires after ttl (10 s)
            return (state(with_patroni).error or "").startswith("patroni:")

        assert await apoll(vetoed, within=45), state(with_patroni)
        s = state(with_patroni)
        assert not s.eligible and s.streaming  # PostgreSQL itself still streams
        assert state(sql_only).eligible  # the SQL probe alone sees nothing wrong
        # writes still go to the primary the SQL probe found
        assert with_patroni.topology().primary == host_label(leader.dsn)
        # a router just opened (e.g. a one-shot `pgsessions status`) shows it at once
        fresh = RouterConfig(**base, patroni=patroni.rest_urls(), name="fresh")
        async with SessionRouter(fresh) as router:
            first = next(h for h in router.topology().hosts if h.host == label)
            assert (first.error or "").startswith("patroni:") and not first.eligible

        await asyncio.to_thread(patroni.start_member, victim.name)

        async def back() -> bool:
            return state(with_patroni).eligible

        assert await apoll(back, within=90), state(with_patroni)
