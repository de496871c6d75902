"""Tenant isolation with row-level security, on real roles: an owner role migrates with
isolation on, the application role runs two tenants, and tenant B tries everything it can
against tenant A (guessed session ids, the session functions, SELECT * on each table, on the
primary and on replicas) through the library and by hand."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from agents import Agent, Runner, set_tracing_disabled
from agents.run_context import RunContextWrapper
from agents.testing import ModelStep, ScriptedModel, assistant_message
from agents.usage import Usage
from psycopg import errors, sql
from psycopg.conninfo import make_conninfo

from pgsessions import (
    PostgresSession,
    RouterConfig,
    SessionRouter,
    TenantConflictError,
    TenantError,
    list_sessions,
    migrate,
)
from pgsessions.devcluster import LocalCluster
from pgsessions.devcluster.cluster import DBNAME
from pgsessions.devcluster.pgbouncer import Bouncer, start_bouncers, stop_bouncers
from pgsessions.devcluster.proxy import TcpProxy, command_complete
from pgsessions.router.placement import bucket_of
from pgsessions.sessions import Migration, load_migrations, tenant_isolation
from pgsessions.sessions.ids import MAX_SESSION_ID_BYTES, MAX_TENANT_BYTES
from tests.helpers import apoll, assistant, poll, run_result, user

set_tracing_disabled(True)

TABLES = ("conversations", "messages", "usage_logs", "branches")


@dataclass(frozen=True)
class Tenancy:
    cluster: LocalCluster
    schema: str
    owner: str
    app: str

    def dsns(self, role: str) -> list[str]:
        return [make_conninfo(dsn, user=role) for dsn in self.cluster.dsns()]

    def owner_config(self) -> RouterConfig:
        # migrating reads nothing from replicas: the owner role is not in pg_monitor
        return RouterConfig(
            hosts=self.dsns(self.owner), schema=self.schema, read_from_replicas=False
        )

    def app_config(self, **kwargs: Any) -> RouterConfig:
        kwargs.setdefault("hosts", self.dsns(self.app))
        return RouterConfig(schema=self.schema, check_interval=0.1, **kwargs)

    def connect(self, node: int = 0) -> psycopg.Connection[Any]:
        """A hand-written connection as the app role (0: the primary, 1.. the replicas)."""
        return psycopg.connect(self.dsns(self.app)[node], autocommit=True)

    def q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(s=sql.Identifier(self.schema))  # type: ignore[arg-type]


@pytest.fixture
def tenancy(cluster: LocalCluster) -> Iterator[Tenancy]:
    """A plain owner role (not a superuser: superusers bypass row-level security), an app
    role in pg_monitor, and a schema name; all dropped afterwards."""
    tag = uuid.uuid4().hex[:8]
    t = Tenancy(cluster, f"t_ten_{tag}", f"pgs_town_{tag}", f"pgs_tapp_{tag}")
    p = cluster.primary
    for role in (t.owner, t.app):
        p.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    p.execute(
        sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
            sql.Identifier(DBNAME), sql.Identifier(t.owner)
        )
    )
    p.execute(sql.SQL("GRANT pg_monitor TO {}").format(sql.Identifier(t.app)))
    cluster.wait_caught_up()
    try:
        yield t
    finally:
        p.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(t.schema)))
        for role in (t.app, t.owner):
            p.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            p.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture
async def isolated(tenancy: Tenancy) -> Tenancy:
    """The schema migrated by the owner, granted to the app role, isolation on."""
    async with SessionRouter(tenancy.owner_config()) as owner:
        await migrate(owner, grant_to=tenancy.app, tenant_isolation=True)
        assert await tenant_isolation(owner)
    tenancy.cluster.wait_caught_up()
    return tenancy


@pytest.fixture
async def app(isolated: Tenancy) -> AsyncIterator[SessionRouter]:
    async with SessionRouter(isolated.app_config()) as router:
        yield router


async def fill(router: SessionRouter) -> dict[str, PostgresSession]:
    """Tenant A: a-secret (items, usage, metadata, a branch) and a-other; tenant B: b-1
    (with a branch); both conversations are on main again."""
    a = PostgresSession("a-secret", router, tenant="A", metadata={"team": "red"})
    await a.add_items([user("A's secret question"), assistant("A's secret answer")])
    await a.store_run_usage(run_result(100))
    await a.create_branch_from_turn(1, "a-branch")
    await a.switch_to_branch("main")
    a2 = PostgresSession("a-other", router, tenant="A", metadata={"team": "red"})
    await a2.add_items([user("A again")])
    b = PostgresSession("b-1", router, tenant="B", metadata={"team": "red"})
    await b.add_items([user("B's question")])
    await b.store_run_usage(run_result(7))
    await b.create_branch_from_turn(1, "b-branch")
    await b.switch_to_branch("main")
    return {"a": a, "a2": a2, "b": b}


async def a_is_intact(router: SessionRouter) -> None:
    a = PostgresSession("a-secret", router, tenant="A")
    assert await a.get_items() == [user("A's secret question"), assistant("A's secret answer")]
    assert await a.get_metadata() == {"team": "red"}
    usage = await a.get_session_usage()
    assert usage is not None and usage["input_tokens"] == 100


# turning it on and off --------------------------------------------------------------------------
async def test_isolation_is_off_until_turned_on_and_no_tenant_is_todays_behaviour(
    tenancy: Tenancy,
) -> None:
    async with SessionRouter(tenancy.owner_config()) as owner:
        await migrate(owner, grant_to=tenancy.app)
        assert not await tenant_isolation(owner)
    tenancy.cluster.wait_caught_up()
    async with SessionRouter(tenancy.app_config()) as router:
        plain = PostgresSession("plain", router)
        await plain.add_items([user("no tenant")])
        assert await plain.get_items() == [user("no tenant")]
        assert [i.session_id for i in await list_sessions(router)] == ["plain"]
        # a tenant is refused while isolation is off: never run unisolated
        for call in (
            PostgresSession("plain", router, tenant="A").get_items(),
            PostgresSession("t", router, tenant="A").add_items([user("x")]),
            list_sessions(router, tenant="A"),
        ):
            with pytest.raises(TenantError, match="tenant isolation is off"):
                await call
        assert await PostgresSession("t", router).get_metadata() is None

        async with SessionRouter(tenancy.owner_config()) as owner:
            await migrate(owner, tenant_isolation=True)
            assert await tenant_isolation(owner)
        tenancy.cluster.wait_caught_up()  # every replica enforces it before the next read
        # rows stored without a tenant belong to no tenant: with isolation on nobody sees
        # them through the library, and a call without a tenant is refused
        assert await PostgresSession("plain", router, tenant="A").get_items() == []
        with pytest.raises(TenantError, match="no tenant set"):
            await plain.get_items()
        with pytest.raises(TenantError, match="no tenant set"):
            await plain.add_items([user("refused")])
        with pytest.raises(TenantError, match="no tenant set"):
            await list_sessions(router)

        async with SessionRouter(tenancy.owner_config()) as owner:
            await migrate(owner, tenant_isolation=False)
            assert not await tenant_isolation(owner)
        tenancy.cluster.wait_caught_up()
        assert await plain.get_items() == [user("no tenant")]


def test_migrate_command_turns_isolation_on_and_off(
    tenancy: Tenancy, capsys: pytest.CaptureFixture[str]
) -> None:
    from pgsessions.cli import main

    hosts = ["--hosts", *tenancy.dsns(tenancy.owner), "--schema", tenancy.schema]
    assert main(["migrate", *hosts, "--grant-to", tenancy.app, "--tenant-isolation", "on"]) == 0
    assert "tenant isolation on" in capsys.readouterr().out
    assert main(["migrate", *hosts]) == 0
    assert "nothing to apply" in (out := capsys.readouterr().out) and "isolation on" in out
    assert main(["migrate", *hosts, "--tenant-isolation", "off"]) == 0
    assert "tenant isolation off" in capsys.readouterr().out
    forced = tenancy.cluster.primary.execute(
        "SELECT count(*) FROM pg_class WHERE relnamespace = %s::regnamespace"
        " AND (relrowsecurity OR relforcerowsecurity)",
        (sql.Identifier(tenancy.schema).as_string(None),),
    )
    assert forced == [(0,)]


async def test_isolation_is_refused_when_a_superuser_owns_the_tables(
    cluster: LocalCluster,
) -> None:
    """Superusers bypass row-level security, also inside the SECURITY DEFINER write
    functions they own: isolation on such a schema would be a lie, so it is refused."""
    schema = f"t_ten_su_{uuid.uuid4().hex[:8]}"
    try:
        async with SessionRouter(RouterConfig(hosts=cluster.dsns(), schema=schema)) as su:
            await migrate(su)
            with pytest.raises(TenantError, match="belong to postgres, a superuser"):
                await migrate(su, tenant_isolation=True)
            assert not await tenant_isolation(su)
            # enabled by hand anyway: set_tenant still refuses to run a tenant on it
            for table in TABLES:
                cluster.primary.execute(
                    sql.SQL(
                        "ALTER TABLE {}.{} ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY"
                    ).format(sql.Identifier(schema), sql.Identifier(table))
                )
            with pytest.raises(TenantError, match="belong to role postgres"):
                await PostgresSession("x", su, tenant="A").add_items([user("x")])
    finally:
        cluster.primary.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


async def test_a_superuser_connection_cannot_act_for_a_tenant(
    isolated: Tenancy,
) -> None:
    """A superuser sees every tenant whatever the setting: a tenant session on such a
    connection is refused instead of silently unisolated."""
    cfg = RouterConfig(hosts=isolated.cluster.dsns(), schema=isolated.schema)
    async with SessionRouter(cfg) as su:
        with pytest.raises(TenantError, match="does not apply to role postgres"):
            await PostgresSession("x", su, tenant="A").get_items()


# two tenants through the library --------------------------------------------------------------
async def test_each_tenant_sees_and_changes_only_its_own(app: SessionRouter) -> None:
    s = await fill(app)
    page = await list_sessions(app, tenant="A", consistency_token=s["a2"].consistency_token)
    assert sorted(i.session_id for i in page) == ["a-other", "a-secret"]
    page = await list_sessions(app, tenant="B", metadata={"team": "red"})
    assert [i.session_id for i in page] == ["b-1"]
    usage = await PostgresSession("b-1", app, tenant="B").get_session_usage()
    assert usage == {
        "requests": 1,
        "input_tokens": 7,
        "output_tokens": 1,
        "total_tokens": 8,
        "total_turns": 1,
    }

    # B guesses A's session id: reads find nothing
    guess = PostgresSession("a-secret", app, tenant="B")
    assert await guess.get_items() == []
    assert await guess.get_metadata() is None
    assert await guess.get_session_usage() is None
    assert await guess.get_turn_usage() == []
    assert await guess.get_turn_usage(1) == {}
    snapshot = await guess._get_compaction_snapshot(10)
    assert snapshot is not None and snapshot.items == []
    assert await snapshot.replace_suffix(0, [user("summary")]) is False
    # writes find nothing to change
    assert await guess.pop_item() is None
    await guess.clear_session()
    await guess.store_run_usage(run_result(999))
    # and cannot take the id over: a clear error, nothing written
    with pytest.raises(TenantConflictError, match="'a-secret' belongs to another tenant"):
        await guess.add_items([user("B writes into A")])
    with pytest.raises(TenantConflictError):
        await guess.update_metadata({"team": "blue"})
    # tokens are remembered per tenant: a fresh session of a third tenant has none of A's
    assert PostgresSession("a-secret", app, tenant="C").consistency_token is None
    assert PostgresSession("a-secret", app, tenant="A").consistency_token is not None
    await a_is_intact(app)
    assert [i.session_id for i in await list_sessions(app, tenant="B")] == ["b-1"]


async def test_a_session_bound_to_a_tenant_never_acts_for_another(app: SessionRouter) -> None:
    class Confused(PostgresSession):
        def resolve_tenant(self, wrapper: RunContextWrapper[Any] | None) -> str | None:
            return "B"

    s = Confused("a-secret", app, tenant="A")
    with pytest.raises(TenantError, match=r"resolve_tenant returned 'B'.*tenant 'A'"):
        await s.get_items()
    with pytest.raises(ValueError, match="tenant must be a non-empty string"):
        PostgresSession("x", app, tenant="")
    with pytest.raises(ValueError, match="tenant is 257 bytes"):
        PostgresSession("x", app, tenant="t" * 257)


class ContextTenant(PostgresSession):
    """Takes the tenant from the run context, as an application serving many tenants would."""

    def resolve_tenant(self, wrapper: RunContextWrapper[Any] | None) -> str | None:
        if wrapper is not None and isinstance(wrapper.context, dict):
            return str(wrapper.context["tenant"])
        return self.tenant


async def test_the_tenant_comes_from_the_runners_context(app: SessionRouter) -> None:
    usage = Usage(requests=1, input_tokens=5, output_tokens=2, total_tokens=7)
    agent = Agent(
        name="a",
        model=ScriptedModel(
            [
                ModelStep(output=[assistant_message("hello A")], usage=usage),
                ModelStep(output=[assistant_message("hello B")], usage=usage),
            ]
        ),
    )
    for tenant in ("A", "B"):
        session = ContextTenant(f"ctx-{tenant}", app)
        result = await Runner.run(
            agent, f"hi from {tenant}", session=session, context={"tenant": tenant}
        )
        await session.store_run_usage(result)  # its tenant: result.context_wrapper's
    a = PostgresSession("ctx-A", app, tenant="A")
    assert (await a.get_items())[0].get("content") == "hi from A"
    assert (await a.get_session_usage() or {}).get("total_tokens") == 7
    assert await PostgresSession("ctx-A", app, tenant="B").get_items() == []
    assert [i.session_id for i in await list_sessions(app, tenant="B")] == ["ctx-B"]
    # a direct call without a wrapper and without tenant= has no tenant: refused
    with pytest.raises(TenantError, match="no tenant set"):
        await ContextTenant("ctx-A", app).get_items()


# by hand, as the application role --------------------------------------------------------------
async def test_hand_written_queries_see_only_the_transactions_tenant(
    isolated: Tenancy, app: SessionRouter
) -> None:
    await fill(app)
    isolated.cluster.wait_caught_up()
    for node in range(len(isolated.cluster.dsns())):  # the primary and each replica
        with isolated.connect(node) as conn:
            # no tenant: every table refuses, loudly
            for table in TABLES:
                with pytest.raises(errors.InsufficientPrivilege, match="no tenant set"):
                    conn.execute(isolated.q(f"SELECT * FROM {{s}}.{table}"))
            with conn.transaction():
                conn.execute(isolated.q("SELECT {s}.set_tenant('B')"))
                for table in TABLES:
                    cur = conn.execute(isolated.q(f"SELECT session_id, tenant FROM {{s}}.{table}"))
                    rows = cur.fetchall()
                    assert rows and {r[1] for r in rows} == {"B"}, (table, rows)
                    assert {r[0] for r in rows} == {"b-1"}
                # guessing ids and writing around the policies: never a row of A's
                for guess in (
                    "SELECT session_id FROM {s}.messages WHERE session_id = 'a-secret'",
                    "SELECT session_id FROM {s}.messages WHERE tenant = 'A'",
                    "SELECT session_id FROM {s}.messages WHERE tenant <> 'B' OR true",
                    "SELECT session_id FROM {s}.conversations WHERE session_id LIKE 'a-%'",
                    "SELECT u.session_id FROM {s}.usage_logs u"
                    " JOIN {s}.conversations c USING (session_id) WHERE c.session_id = 'a-secret'",
                    "SELECT session_id FROM {s}.usage_logs UNION SELECT session_id"
                    " FROM {s}.conversations UNION SELECT session_id FROM {s}.messages",
                ):
                    rows = conn.execute(isolated.q(guess)).fetchall()
                    assert {r[0] for r in rows} <= {"b-1"}, (guess, rows)
                [(total,)] = conn.execute(
                    isolated.q("SELECT coalesce(sum(input_tokens), 0) FROM {s}.usage_logs")
                ).fetchall()
                assert total == 7  # A's 100 tokens are not in B's totals
            # the setting ended with the transaction: the connection carries no tenant
            with pytest.raises(errors.InsufficientPrivilege, match="no tenant set"):
                conn.execute(isolated.q("SELECT * FROM {s}.messages"))
            # set alone in autocommit, it is gone by the next statement
            conn.execute(isolated.q("SELECT {s}.set_tenant('A')"))
            with pytest.raises(errors.InsufficientPrivilege, match="no tenant set"):
                conn.execute(isolated.q("SELECT * FROM {s}.messages"))
            # row_security = off does not switch the policies off for this role
            with conn.transaction():
                conn.execute(isolated.q("SELECT {s}.set_tenant('B')"))
                conn.execute("SET LOCAL row_security = off")
                with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
                    conn.execute(isolated.q("SELECT * FROM {s}.messages"))


async def test_the_session_functions_by_hand_cannot_touch_another_tenant(
    isolated: Tenancy, app: SessionRouter
) -> None:
    await fill(app)
    calls = {
        "pop": ("SELECT {s}.pop_item('a-secret', gen_random_uuid())", None),
        "clear": ("SELECT {s}.clear_session('a-secret', gen_random_uuid())", True),
        "clear1": ("SELECT {s}.clear_session('a-secret')", ""),
        "usage": (
            "SELECT {s}.store_usage('a-secret', gen_random_uuid(), 'm', 1, 1, 1, 2, NULL, NULL)",
            None,
        ),
        "replace": (
            "SELECT {s}.replace_suffix('a-secret', gen_random_uuid(), now(), ARRAY[1, 2]::bigint[],"
            " NULL, ARRAY['{{}}']::json[], ARRAY[NULL]::text[], ARRAY[NULL]::text[])",
            False,
        ),
    }
    with isolated.connect() as conn:
        for name, (text, expected) in calls.items():
            with conn.transaction():
                conn.execute(isolated.q("SELECT {s}.set_tenant('B')"))
                assert conn.execute(isolated.q(text)).fetchall() == [(expected,)], name
        for text in (
            "SELECT {s}.add_items('a-secret', gen_random_uuid(), ARRAY['{{}}']::json[],"
            " ARRAY['user'], ARRAY[NULL], NULL)",
            "SELECT {s}.update_metadata('a-secret', gen_random_uuid(), '{{}}', true)",
        ):
            with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
                with conn.transaction():
                    conn.execute(isolated.q("SELECT {s}.set_tenant('B')"))
                    conn.execute(isolated.q(text))
        # isolation cannot be switched off by the application role
        with pytest.raises(errors.InsufficientPrivilege, match="must be owner"):
            conn.execute(isolated.q("ALTER TABLE {s}.messages DISABLE ROW LEVEL SECURITY"))
        with pytest.raises(errors.InsufficientPrivilege, match="must be owner"):
            conn.execute(isolated.q("DROP POLICY tenant_isolation ON {s}.messages"))
    await a_is_intact(app)


async def test_another_tenants_operation_id_replays_nothing_of_its_result(
    isolated: Tenancy, app: SessionRouter
) -> None:
    """Stored results (ops, migration 0009) are scoped like every other row: under tenant
    A, B's operation ids of a pop, a metadata update and a usage row return nothing of B's;
    under B they still replay B's own results. By hand, as the application role."""
    await fill(app)
    pop, meta, usage = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    calls = {  # in this order: the usage row needs B's user item, which the pop removes
        "usage": ("SELECT {s}.store_usage('b-1', %s, 'm', 1, 1, 1, 2, NULL, NULL)", usage),
        "meta": ("SELECT {s}.update_metadata('b-1', %s, '{{\"b\": \"secret\"}}', false)", meta),
        "pop": ("SELECT {s}.pop_item('b-1', %s)", pop),
    }

    def run(conn: psycopg.Connection[Any], tenant: str, name: str) -> Any:
        text, op = calls[name]
        with conn.transaction():
            conn.execute(isolated.q("SELECT {s}.set_tenant(%s)"), (tenant,))
            return conn.execute(isolated.q(text), (op,)).fetchall()

    with isolated.connect() as conn:
        originals = {name: run(conn, "B", name) for name in calls}
        assert originals["pop"] == [(user("B's question"),)]
        assert originals["meta"] == [({"team": "red", "b": "secret"},)]
        assert originals["usage"] == [(1,)]
        assert run(conn, "A", "pop") == [(None,)]  # a pop of its own: nothing of A's there
        assert run(conn, "A", "usage") == [(None,)]
        with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
            run(conn, "A", "meta")  # a write of its own, refused: B's conversation
        for name in calls:  # B's replays still return B's results, and change nothing
            assert run(conn, "B", name) == originals[name], name
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(isolated.q("SELECT * FROM {s}.tenant_ops"))
    await a_is_intact(app)
    assert await PostgresSession("b-1", app, tenant="B").get_items() == []


async def test_upgrading_keeps_each_tenants_recent_results(tenancy: Tenancy) -> None:
    """Results stored before migration 0009 take their conversation's tenant: a retry that
    straddles the upgrade still replays for its tenant, and only for it."""
    before = [m for m in load_migrations() if m.version < "0009"]
    async with SessionRouter(tenancy.owner_config()) as owner:
        await migrate(owner, migrations=before, grant_to=tenancy.app, tenant_isolation=True)
    tenancy.cluster.wait_caught_up()
    # written through the 0008 schema's own functions (this version's sessions need 0010)
    add = "SELECT {s}.add_items('b-1', %s, %s::json[], ARRAY['user'], ARRAY['message'], NULL)"
    op = uuid.uuid4()
    pop = "SELECT {s}.pop_item('b-1', %s)"
    with tenancy.connect() as conn:
        with conn.transaction():
            conn.execute(tenancy.q("SELECT {s}.set_tenant('B')"))
            conn.execute(tenancy.q(add), (uuid.uuid4(), [json.dumps(user("B's question"))]))
        with conn.transaction():
            conn.execute(tenancy.q("SELECT {s}.set_tenant('B')"))
            assert conn.execute(tenancy.q(pop), (op,)).fetchall() == [(user("B's question"),)]
    async with SessionRouter(tenancy.owner_config()) as owner:
        assert await migrate(owner) == [m.version for m in load_migrations() if m.version >= "0009"]
        assert await tenant_isolation(owner)
    with tenancy.connect() as conn:
        for tenant, expected in (("B", user("B's question")), ("A", None)):
            with conn.transaction():
                conn.execute(tenancy.q("SELECT {s}.set_tenant(%s)"), (tenant,))
                assert conn.execute(tenancy.q(pop), (op,)).fetchall() == [(expected,)], tenant


async def test_prune_ops_removes_every_tenants_old_ids(
    isolated: Tenancy, app: SessionRouter
) -> None:
    stores = await fill(app)
    await stores["a"].pop_item()
    await stores["b"].pop_item()
    with psycopg.connect(isolated.dsns(isolated.owner)[0], autocommit=True) as conn:
        count = isolated.q("SELECT tenant, count(*) FROM {s}.tenant_ops GROUP BY 1 ORDER BY 1")
        assert [t for t, n in conn.execute(count).fetchall() if n] == ["A", "B"]
        conn.execute(isolated.q("UPDATE {s}.tenant_ops SET created_at = now() - '2h'::interval"))
    with isolated.connect() as conn:
        (pruned,) = conn.execute(isolated.q("SELECT {s}.prune_ops()")).fetchone() or (0,)
    assert pruned >= 2
    with psycopg.connect(isolated.dsns(isolated.owner)[0], autocommit=True) as conn:
        assert conn.execute(count).fetchall() == []


# pooling, replicas, tokens, retries ---------------------------------------------------------
async def test_a_pooled_connection_never_carries_a_tenant(isolated: Tenancy) -> None:
    """One connection for everything: A's writes and reads, then B's, then no tenant."""
    cfg = isolated.app_config(
        hosts=isolated.dsns(isolated.app)[:1], primary_pool_min=1, primary_pool_max=1
    )
    async with SessionRouter(cfg) as router:
        await fill(router)
        for _ in range(3):
            assert await PostgresSession("a-secret", router, tenant="B").get_items() == []
            await a_is_intact(router)
            with pytest.raises(TenantError, match="no tenant set"):
                await PostgresSession("a-secret", router).get_items()
        assert router.pool_stats()[router.topology().hosts[0].host]["pool_size"] == 1


async def test_replica_reads_are_isolated_and_read_their_writes(
    isolated: Tenancy, app: SessionRouter
) -> None:
    async def replicas_eligible() -> bool:
        return len([h for h in app.topology().replicas() if h.eligible]) == 2

    assert await apoll(replicas_eligible, within=15), app.topology()
    s = await fill(app)
    before = app.stats()["reads_on_replicas"]

    async def on_replica() -> bool:
        # a fresh session object of the same tenant reads the writes (the router's token)
        a = PostgresSession("a-secret", app, tenant="A")
        assert len(await a.get_items()) == 2
        assert await PostgresSession("a-secret", app, tenant="B").get_items() == []
        assert await PostgresSession("b-1", app, tenant="A").get_items() == []
        page = await list_sessions(app, tenant="B")
        assert [i.session_id for i in page] == ["b-1"]
        return bool(app.stats()["reads_on_replicas"] >= before + 4)

    assert await apoll(on_replica, within=15), app.stats()
    # a token handed to another server (a router of its own) keeps read-your-writes per tenant
    await s["a"].add_items([user("latest")])
    token = s["a"].consistency_token
    async with SessionRouter(isolated.app_config()) as other:
        there = PostgresSession("a-secret", other, tenant="A", consistency_token=token)
        assert (await there.get_items())[-1] == user("latest")
        assert await PostgresSession("a-secret", other, tenant="B").get_items() == []


LOST_CALL = command_complete("CALL")
LOST_COMMIT = command_complete("COMMIT")


async def test_a_retried_write_is_applied_once_for_its_tenant(isolated: Tenancy) -> None:
    """The reply to tenant A's write is lost after its commit; the router retries it (the
    tenant set again in the retry's own transaction) and the operation id applies it once."""
    primary = isolated.cluster.primary
    async with TcpProxy("127.0.0.1", primary.port) as proxy:
        hosts = [proxy.dsn(user=isolated.app), *isolated.dsns(isolated.app)[1:]]
        async with SessionRouter(isolated.app_config(hosts=hosts)) as router:

            async def lost_reply(marker: bytes, write: Any) -> Any:
                retries = router.stats()["retries"].get("write", {}).get("connection", 0)
                drops = proxy.drops
                proxy.drop_after_reply(marker)
                async with asyncio.timeout(40):
                    result = await write
                assert proxy.drops == drops + 1, "the reply was not dropped"
                assert router.stats()["retries"]["write"].get("connection", 0) > retries
                return result

            a = PostgresSession("retry", router, tenant="A")
            await a.add_items([user("0")])
            await lost_reply(LOST_CALL, a.add_items([user("1"), user("2")]))
            assert await a.get_items() == [user("0"), user("1"), user("2")]
            assert await lost_reply(LOST_COMMIT, a.pop_item()) == user("2")
            assert await a.get_items() == [user("0"), user("1")]
            assert await lost_reply(LOST_COMMIT, a.update_metadata({"k": "v"})) == {"k": "v"}
            assert await PostgresSession("retry", router, tenant="B").get_items() == []
            assert await PostgresSession("retry", router, tenant="B").get_metadata() is None


# migrations keep working --------------------------------------------------------------------
async def test_a_later_migration_sees_every_tenants_rows(
    isolated: Tenancy, app: SessionRouter
) -> None:
    await fill(app)
    later = Migration(
        "9001",
        "backfill",
        "UPDATE {schema}.conversations SET metadata = metadata || '{\"v\": 2}'",
    )
    async with SessionRouter(isolated.owner_config()) as owner:
        assert await migrate(owner, migrations=[*load_migrations(), later]) == ["9001"]
        assert await tenant_isolation(owner)  # forced again after it
    for tenant, sid in (("A", "a-secret"), ("A", "a-other"), ("B", "b-1")):
        meta = await PostgresSession(sid, app, tenant=tenant).get_metadata()
        assert meta == {"team": "red", "v": 2}, (tenant, sid)


# a transaction pooler -------------------------------------------------------------------------
@pytest.fixture
def bouncers(isolated: Tenancy) -> Iterator[list[Bouncer]]:
    """One transaction-mode PgBouncer per node with ONE server connection each, so every
    client's transactions take turns on the same backend; the tenancy roles may log in."""
    started = start_bouncers(isolated.cluster, pool_mode="transaction", pool_size=1)
    try:
        for b in started:
            users = "".join(f'"{r}" ""\n' for r in ("postgres", isolated.owner, isolated.app))
            (b.dir / "userlist.txt").write_text(users)
            pid = b.pid()
            assert pid is not None
            os.kill(pid, signal.SIGHUP)  # reload the auth file
        dsn = make_conninfo(started[0].dsn, user=isolated.app)

        def app_accepted() -> bool:
            try:
                with psycopg.connect(dsn, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return True
            except psycopg.Error:
                return False

        assert poll(app_accepted, timeout=10)
        yield started
    finally:
        stop_bouncers(isolated.cluster.base_dir, only=started)


async def test_through_a_transaction_pooler_no_tenant_leaks(
    isolated: Tenancy, bouncers: list[Bouncer]
) -> None:
    """Three routers (clients) share one server connection per node through PgBouncer in
    transaction mode; their tenants' transactions interleave on it and none leaks."""
    hosts = [make_conninfo(b.dsn, user=isolated.app) for b in bouncers]
    cfg = isolated.app_config(hosts=hosts, healthy_for=0.3)
    async with (
        SessionRouter(cfg) as ra,
        SessionRouter(cfg) as rb,
        SessionRouter(cfg) as rn,
    ):
        await fill(ra)
        sa = PostgresSession("a-secret", ra, tenant="A")
        sb = PostgresSession("a-secret", rb, tenant="B")
        nobody = PostgresSession("a-secret", rn)

        async def a_reads() -> None:
            assert len(await sa.get_items()) == 2

        async def b_reads() -> None:
            assert await sb.get_items() == []
            assert [i.session_id for i in await list_sessions(rb, tenant="B")] == ["b-1"]

        async def nobody_reads() -> None:
            with pytest.raises(TenantError, match="no tenant set"):
                await nobody.get_items()

        for _ in range(20):
            await asyncio.gather(a_reads(), b_reads(), nobody_reads(), b_reads(), a_reads())
        with pytest.raises(TenantConflictError):
            await sb.add_items([user("B through the bouncer")])
    await a_is_intact_via(isolated)


async def a_is_intact_via(isolated: Tenancy) -> None:
    async with SessionRouter(isolated.app_config()) as router:
        await a_is_intact(router)


async def test_a_bad_tenant_is_refused_before_any_io(app: SessionRouter) -> None:
    s = PostgresSession("x", app, tenant="A")
    for bad in ("", "a\x00b", "t" * 257, 5):
        with pytest.raises(ValueError, match="tenant"):
            s.tenant = bad  # type: ignore[assignment]
        with pytest.raises(ValueError, match="tenant"):
            await list_sessions(app, tenant=bad)  # type: ignore[arg-type]
    assert s.tenant == "A"


async def test_the_longest_tenant_and_id_fit_every_index(app: SessionRouter) -> None:
    """A tenant of MAX_TENANT_BYTES and an id of MAX_SESSION_ID_BYTES, neither compressible,
    share the listing index entry (tenant, updated_at, session_id): it stays under the B-tree
    limit."""
    rng = random.Random(15)
    alphabet = [chr(c) for c in range(0x4E00, 0x4E00 + 2000)]  # 3 bytes each
    tenant = "".join(rng.choice(alphabet) for _ in range(85)) + "t"  # 256 bytes
    sid = "".join(rng.choice(alphabet) for _ in range(341)) + "s"  # 1024 bytes
    assert (len(tenant.encode()), len(sid.encode())) == (MAX_TENANT_BYTES, MAX_SESSION_ID_BYTES)
    s = PostgresSession(sid, app, tenant=tenant)
    await s.add_items([user("long")])
    await s.store_run_usage(run_result(3))
    assert await s.update_metadata({"k": 1}) == {"k": 1}
    page = await list_sessions(app, tenant=tenant, consistency_token=s.consistency_token)
    assert [i.session_id for i in page] == [sid]
    assert await PostgresSession(sid, app, tenant="B").get_items() == []


async def test_a_set_up_with_another_bucket_count_recomputes_every_tenants_rows(
    isolated: Tenancy,
) -> None:
    """Writing shard_identity with a count other than 1024 recomputes the bucket of every
    tenant's rows (the owner's trigger sees them all) and leaves isolation forced."""
    async with SessionRouter(isolated.app_config()) as router:
        await fill(router)
    with psycopg.connect(isolated.dsns(isolated.owner)[0], autocommit=True) as conn:
        conn.execute(isolated.q("INSERT INTO {s}.shard_identity (name, buckets) VALUES ('s1', 16)"))
    p = isolated.cluster.primary  # a superuser: sees every row
    for table in (*TABLES, "tenant_ops"):
        got = p.execute(
            sql.SQL("SELECT session_id, bucket FROM {}.{}").format(
                sql.Identifier(isolated.schema), sql.Identifier(table)
            )
        )
        assert got and all(b == bucket_of(sid, 16) for sid, b in got), table
    forced = p.execute(
        "SELECT count(*) FROM pg_class WHERE relnamespace = %s::regnamespace"
        " AND relforcerowsecurity",
        (isolated.schema,),
    )
    assert forced == [(len(TABLES),)]
    isolated.cluster.wait_caught_up()
    async with SessionRouter(isolated.app_config()) as router:
        await a_is_intact(router)
        assert await PostgresSession("a-secret", router, tenant="B").get_items() == []
