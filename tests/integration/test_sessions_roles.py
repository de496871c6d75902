"""Least privilege: migrate as an owner role, run sessions as an application role that can
execute the session functions and read, and can neither change tables directly nor DDL."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from agents import Agent, Runner, set_tracing_disabled
from agents.testing import ModelStep, ScriptedModel, assistant_message
from agents.usage import Usage
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails
from psycopg import errors, sql
from psycopg.conninfo import make_conninfo

from pgsessions import (
    MissingPrivilegeError,
    PostgresSession,
    RouterConfig,
    SessionRouter,
    list_sessions,
    migrate,
)
from pgsessions.devcluster import LocalCluster
from pgsessions.devcluster.cluster import DBNAME
from pgsessions.router.probe import NEEDS_PG_MONITOR
from pgsessions.sessions import Migration, load_migrations
from tests.helpers import apoll

set_tracing_disabled(True)


@dataclass(frozen=True)
class Roles:
    owner: str
    app: str


@pytest.fixture
def roles(cluster: LocalCluster, schema: str) -> Iterator[Roles]:
    """An owner role (may create schemas) and an application role, both LOGIN; the app role
    is in pg_monitor because the router's health monitor runs on the same connections."""
    tag = uuid.uuid4().hex[:8]
    made = Roles(owner=f"pgs_owner_{tag}", app=f"pgs_app_{tag}")
    p = cluster.primary
    p.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(made.owner)))
    p.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(made.app)))
    p.execute(
        sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
            sql.Identifier(DBNAME), sql.Identifier(made.owner)
        )
    )
    p.execute(sql.SQL("GRANT pg_monitor TO {}").format(sql.Identifier(made.app)))
    try:
        yield made
    finally:
        p.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        for role in (made.app, made.owner):
            p.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            p.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _as(cluster: LocalCluster, role: str) -> list[str]:
    return [make_conninfo(dsn, user=role) for dsn in cluster.dsns()]


def _run_result(inp: int, out: int) -> ScriptedModel:
    usage = Usage(
        requests=1,
        input_tokens=inp,
        output_tokens=out,
        total_tokens=inp + out,
        input_tokens_details=InputTokensDetails(cached_tokens=0, cache_write_tokens=0),
        output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
    )
    return ScriptedModel([ModelStep(output=[assistant_message("hello")], usage=usage)])


async def test_app_role_runs_sessions_with_only_the_granted_privileges(
    cluster: LocalCluster, schema: str, roles: Roles
) -> None:
    # the owner role is not in pg_monitor: a router that only migrates reads nothing from
    # replicas, so open() does not require it
    owner_cfg = RouterConfig(
        hosts=_as(cluster, roles.owner), schema=schema, read_from_replicas=False
    )
    async with SessionRouter(owner_cfg) as owner_router:
        assert await migrate(owner_router, grant_to=roles.app) != []

    app_cfg = RouterConfig(hosts=_as(cluster, roles.app), schema=schema, check_interval=0.1)
    async with SessionRouter(app_cfg) as router:
        # servers starting as the app role may call migrate(): up to date, it changes nothing
        assert await migrate(router) == []
        # but they cannot apply anything
        extra = Migration("9001", "extra", "CREATE TABLE {schema}.extra (x integer)")
        with pytest.raises(errors.InsufficientPrivilege):
            await migrate(router, migrations=[*load_migrations(), extra])

    app_cfg = RouterConfig(hosts=_as(cluster, roles.app), schema=schema, check_interval=0.1)
    async with SessionRouter(app_cfg) as router:

        async def replicas_eligible() -> bool:
            return len([h for h in router.topology().replicas() if h.eligible]) == 2

        assert await apoll(replicas_eligible, within=15), router.topology()
        session = PostgresSession("roles-1", router)
        await session.add_items(
            [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
        )
        assert await session.pop_item() == {"role": "user", "content": "b"}
        agent = Agent(name="assistant", model=_run_result(7, 3))
        result = await Runner.run(agent, "hi", session=session)
        await session.store_run_usage(result)
        usage = await session.get_session_usage()
        assert usage is not None and usage["total_tokens"] == 10
        assert await session.update_metadata({"team": "red"}) == {"team": "red"}
        page = await list_sessions(router, metadata={"team": "red"})
        assert [info.session_id for info in page.sessions] == ["roles-1"]

        await session.clear_session()
        assert await session.get_items() == []
        await session.add_items([{"role": "user", "content": "again"}])

        # reads as the app role also run on replicas (SELECT replicates with the grants)
        before = router.stats()["reads_on_replicas"]

        async def read_on_replica() -> bool:
            items = await PostgresSession("roles-1", router).get_items()
            assert items == [{"role": "user", "content": "again"}]
            return bool(router.stats()["reads_on_replicas"] > before)

        assert await apoll(read_on_replica, within=15), router.stats()["reads"]

    forbidden = [
        "DROP TABLE {s}.messages",
        "ALTER TABLE {s}.messages ADD COLUMN x integer",
        "TRUNCATE {s}.messages",
        "DELETE FROM {s}.messages",
        "UPDATE {s}.conversations SET metadata = '{{}}'",
        "INSERT INTO {s}.usage_logs (session_id) VALUES ('x')",
        "CREATE TABLE {s}.extra (x integer)",
        "DROP SCHEMA {s} CASCADE",
    ]
    with psycopg.connect(_as(cluster, roles.app)[0], autocommit=True) as conn:
        for text in forbidden:
            stmt = sql.SQL(text).format(s=sql.Identifier(schema))  # type: ignore[arg-type]
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(stmt)
        # the functions the app may call are callable; the tables are still there
        conn.execute(
            sql.SQL("SELECT count(*) FROM {}.messages").format(sql.Identifier(schema))
        ).fetchone()


def test_migrate_command_grants_exactly_what_sessions_need(
    cluster: LocalCluster, schema: str, roles: Roles
) -> None:
    """`pgsessions migrate --grant-to ROLE`: usage, execute, select; nothing else."""
    from pgsessions.cli import main

    hosts = _as(cluster, roles.owner)
    assert main(["migrate", "--hosts", *hosts, "--schema", schema, "--grant-to", roles.app]) == 0
    q = sql.SQL(
        "SELECT has_schema_privilege(%(r)s, %(s)s, 'USAGE'),"
        " has_schema_privilege(%(r)s, %(s)s, 'CREATE'),"
        " has_function_privilege(%(r)s, %(f)s, 'EXECUTE'),"
        " has_function_privilege('public', %(f)s, 'EXECUTE'),"
        " has_table_privilege(%(r)s, %(t)s, 'SELECT'),"
        " has_table_privilege(%(r)s, %(t)s, 'INSERT,UPDATE,DELETE,TRUNCATE,REFERENCES,TRIGGER'),"
        " has_table_privilege(%(r)s, %(ops)s, 'SELECT')"
    )
    qs = sql.Identifier(schema).as_string(None)
    params = {
        "r": roles.app,
        "s": schema,
        "f": f"{qs}.pop_item(text, uuid)",
        "t": f"{qs}.messages",
        "ops": f"{qs}.ops",
    }
    for node in (cluster.primary, *cluster.replicas):
        cluster.wait_caught_up()
        assert node.execute(q, params) == [(True, False, True, False, True, False, False)]
    # the whole grant list of the schema's relations and routines: exactly these, no more
    on_relations = sql.SQL(
        "SELECT c.relname, a.privilege_type FROM pg_class c, aclexplode(c.relacl) a"
        " WHERE c.relnamespace = %(s)s::regnamespace AND a.grantee <> c.relowner"
        " ORDER BY 1, 2"
    )
    assert cluster.primary.execute(on_relations, {"s": qs}) == [
        ("branches", "SELECT"),
        ("conversations", "SELECT"),
        ("messages", "SELECT"),
        ("schema_migrations", "SELECT"),
        ("usage_logs", "SELECT"),
    ]
    on_routines = sql.SQL(
        "SELECT count(*), count(*) FILTER (WHERE a.grantee = %(r)s::regrole"
        " AND a.privilege_type = 'EXECUTE'), count(*) FILTER (WHERE a.grantee = 0)"
        " FROM pg_proc p, aclexplode(p.proacl) a"
        " WHERE p.pronamespace = %(s)s::regnamespace AND a.grantee <> p.proowner"
    )
    routines = cluster.primary.execute(
        sql.SQL("SELECT count(*) FROM pg_proc WHERE pronamespace = %(s)s::regnamespace"),
        {"s": qs},
    )
    assert routines[0][0] >= 9
    assert cluster.primary.execute(on_routines, {"s": qs, "r": roles.app}) == [
        (routines[0][0], routines[0][0], 0)
    ]


async def test_router_without_pg_monitor_says_so(cluster: LocalCluster, schema: str) -> None:
    """A role outside pg_monitor is refused at open
    (tests/integration/test_router_privileges.py). If it
    loses pg_monitor later, it cannot see the walreceiver status any more: replicas leave
    rotation and each says the role needs pg_monitor."""
    role = f"pgs_nomon_{uuid.uuid4().hex[:8]}"
    cluster.primary.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        cluster.wait_caught_up()
        cfg = RouterConfig(hosts=_as(cluster, role), schema=schema, check_interval=0.1)
        with pytest.raises(MissingPrivilegeError, match="needs pg_monitor"):
            await SessionRouter(cfg).open()
        cluster.primary.execute(sql.SQL("GRANT pg_monitor TO {}").format(sql.Identifier(role)))
        cluster.wait_caught_up()
        async with SessionRouter(cfg) as router:

            async def both_eligible() -> bool:
                return len([h for h in router.topology().replicas() if h.eligible]) == 2

            assert await apoll(both_eligible, within=15), router.topology()
            cluster.primary.execute(
                sql.SQL("REVOKE pg_monitor FROM {}").format(sql.Identifier(role))
            )

            async def both_say_why() -> bool:
                replicas = router.topology().replicas()
                return len(replicas) == 2 and all(h.error == NEEDS_PG_MONITOR for h in replicas)

            assert await apoll(both_say_why, within=10), router.topology()
            assert not any(h.eligible for h in router.topology().replicas())
    finally:
        cluster.primary.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_status_runs_as_a_monitor_role(
    cluster: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pgsessions status` needs pg_monitor and nothing in the schema."""
    from pgsessions.cli import main

    role = f"pgs_mon_{uuid.uuid4().hex[:8]}"
    cluster.primary.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    cluster.primary.execute(sql.SQL("GRANT pg_monitor TO {}").format(sql.Identifier(role)))
    try:
        cluster.wait_caught_up()
        assert main(["status", "--hosts", *_as(cluster, role), "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        replicas = [h for h in shown["hosts"] if h["role"] == "replica"]
        assert len(replicas) == 2
        assert all(h["streaming"] and h["error"] != NEEDS_PG_MONITOR for h in replicas), replicas
    finally:
        cluster.primary.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
