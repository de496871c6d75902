"""SessionRouter.open() refuses a role that cannot see replication status (pg_monitor), with
an error naming the role, the hosts and the GRANT; real roles on the shared cluster."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pgsessions import MissingPrivilegeError, RouterConfig, SessionRouter
from pgsessions.devcluster import LocalCluster
from pgsessions.router.privileges import missing_pg_monitor
from tests.helpers import apoll


# the decision, on plain data ------------------------------------------------------------------
def test_every_role_with_the_privilege_passes() -> None:
    assert missing_pg_monitor({}) is None
    assert missing_pg_monitor({"h1:5432": ("app", True), "h2:5432": ("app", True)}) is None


def test_the_error_names_each_role_its_hosts_and_the_grant() -> None:
    error = missing_pg_monitor(
        {
            "h1:5432": ("app", False),
            "h2:5432": ("app", False),
            "h3:5432": ("Odd Role", False),
            "h4:5432": ("ok", True),
        }
    )
    assert error is not None
    text = str(error)
    assert "needs pg_monitor" in text
    assert "role 'Odd Role' on h3:5432; role 'app' on h1:5432, h2:5432" in text
    assert 'GRANT pg_monitor TO "Odd Role"; GRANT pg_monitor TO "app";' in text
    assert "ok" not in error.roles and error.roles == ["Odd Role", "app"]
    assert "pg_stat_wal_receiver" in text


# real roles -----------------------------------------------------------------------------------
@pytest.fixture
def make_role(cluster: LocalCluster) -> Iterator[Callable[..., str]]:
    """make_role(*grants, inherit=True) -> a new LOGIN role name; all dropped afterwards."""
    made: list[str] = []

    def make(*grants: str, inherit: bool = True) -> str:
        name = f"pgs_priv_{uuid.uuid4().hex[:8]}"
        options = sql.SQL("LOGIN") if inherit else sql.SQL("LOGIN NOINHERIT")
        cluster.primary.execute(sql.SQL("CREATE ROLE {} {}").format(sql.Identifier(name), options))
        made.append(name)
        for granted in grants:
            cluster.primary.execute(
                sql.SQL("GRANT {} TO {}").format(sql.Identifier(granted), sql.Identifier(name))
            )
        cluster.wait_caught_up()  # the replicas know the role before anyone logs in
        return name

    yield make
    for name in reversed(made):
        cluster.primary.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def _as(cluster: LocalCluster, role: str) -> list[str]:
    return [make_conninfo(dsn, user=role) for dsn in cluster.dsns()]


async def test_a_role_without_pg_monitor_is_refused_at_open(
    cluster: LocalCluster, make_role: Callable[..., str]
) -> None:
    role = make_role()
    router = SessionRouter(RouterConfig(hosts=_as(cluster, role), check_interval=0.1))
    with pytest.raises(MissingPrivilegeError) as info:
        await router.open()
    text = str(info.value)
    assert f"role {role!r} on " in text and "needs pg_monitor" in text
    assert f'GRANT pg_monitor TO "{role}";' in text
    for node in (cluster.primary, *cluster.replicas):
        assert f"127.0.0.1:{node.port}" in text  # every host, each with the same role
    assert info.value.roles == [role]
    assert router.closed
    assert router._monitor.tasks() == []
    assert all(h.pool is None for h in router._host_list)
    # the GRANT the message gives is the fix
    cluster.primary.execute(f'GRANT pg_monitor TO "{role}"')
    cluster.wait_caught_up()
    async with SessionRouter(RouterConfig(hosts=_as(cluster, role), check_interval=0.1)) as r:

        async def replicas_eligible() -> bool:
            return len([h for h in r.topology().replicas() if h.eligible]) == 2

        assert await apoll(replicas_eligible, within=15), r.topology()


@pytest.mark.parametrize("granted", ["pg_monitor", "pg_read_all_stats"])
async def test_a_role_that_inherits_the_privilege_opens(
    cluster: LocalCluster, make_role: Callable[..., str], granted: str
) -> None:
    group = make_role(granted)
    role = make_role(group)  # in pg_monitor through another role
    async with SessionRouter(RouterConfig(hosts=_as(cluster, role), check_interval=0.1)) as r:

        async def replicas_eligible() -> bool:
            return len([h for h in r.topology().replicas() if h.eligible]) == 2

        assert await apoll(replicas_eligible, within=15), r.topology()


async def test_a_noinherit_member_is_refused(
    cluster: LocalCluster, make_role: Callable[..., str]
) -> None:
    """A NOINHERIT role holds pg_monitor's privileges only after SET ROLE, which the monitor's
    queries never do: PostgreSQL hides the status from it."""
    role = make_role("pg_monitor", inherit=False)
    with pytest.raises(MissingPrivilegeError, match=f'GRANT pg_monitor TO "{role}"'):
        await SessionRouter(RouterConfig(hosts=_as(cluster, role))).open()


async def test_nothing_is_checked_when_no_read_goes_to_a_replica(
    cluster: LocalCluster, make_role: Callable[..., str]
) -> None:
    role = make_role()
    hosts = _as(cluster, role)
    async with SessionRouter(RouterConfig(hosts=hosts[:1])) as r:
        assert r.topology().primary is not None
    async with SessionRouter(RouterConfig(hosts=hosts, read_from_replicas=False)) as r:
        assert r.topology().primary is not None


def test_status_without_pg_monitor_says_what_to_grant(
    cluster: LocalCluster, make_role: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    from pgsessions.cli import main

    role = make_role()
    assert main(["status", "--hosts", *_as(cluster, role), "--json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pgsessions status: the router's health monitor needs pg_monitor")
    assert f'GRANT pg_monitor TO "{role}";' in err
