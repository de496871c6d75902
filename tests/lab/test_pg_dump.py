"""A logical dump of the whole store (``pg_dumpall --roles-only`` + ``pg_dump -Fc`` of the
schema) restored with ``pg_restore`` into a new server: the roles' grants, the row-level
security policies and every session come back, tenant isolation still holds, and
``migrate`` has nothing to do. Real servers, the real tools (as README documents them)."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pgsessions import PostgresSession, RouterConfig, SessionRouter, migrate
from pgsessions.devcluster import LocalCluster, Node
from pgsessions.devcluster.binaries import chown_to_server_user, run_as_server_user
from pgsessions.devcluster.node import DBNAME
from pgsessions.sessions import tenant_isolation
from tests.helpers import assistant, run_result, user

TAG = uuid.uuid4().hex[:8]
SCHEMA, OWNER, APP = f"t_dump_{TAG}", f"pgs_downer_{TAG}", f"pgs_dapp_{TAG}"
ITEMS = {
    ("A", "a-1"): [user("A's question ü 🙂"), assistant("nul \u0000 and '; DROP TABLE x; --")],
    ("A", "a-2"): [user("A again"), {"type": "function_call", "call_id": "c1", "arguments": "{}"}],
    ("B", "b-1"): [user("B's question")],
}


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[LocalCluster, LocalCluster, Path]]:
    """A source and an empty target server, and a directory for the dump files."""
    work = Path(tempfile.mkdtemp(prefix="pgsessions-dump-"))
    work.chmod(0o755)
    chown_to_server_user(work)
    source, target = LocalCluster(replicas=0, fsync=False), LocalCluster(replicas=0, fsync=False)
    try:
        source.start()
        target.start()
        yield source, target, work
    finally:
        source.stop()
        target.stop()
        shutil.rmtree(work, ignore_errors=True)


def as_role(node: Node, role: str) -> list[str]:
    return [make_conninfo(node.dsn, user=role)]


def tool(cluster: LocalCluster, name: str, *args: str) -> None:
    node = cluster.primary
    run_as_server_user(
        [str(cluster.bindir / name), "-h", "127.0.0.1", "-p", str(node.port), "-U", "postgres",
         *args], timeout=120,
    )  # fmt: skip


#: what must come back: every row of every table (as a superuser, past row-level security),
#: the policies, row-level security flags and owners, and the grants on tables and routines
CATALOG = {
    "conversations": "SELECT session_id, tenant, metadata::text, created_at FROM {s}.conversations"
    " ORDER BY session_id",
    "messages": "SELECT session_id, seq, tenant, item::text, op FROM {s}.messages"
    " ORDER BY session_id, seq",
    "usage": "SELECT session_id, tenant, input_tokens, total_tokens FROM {s}.usage_logs"
    " ORDER BY session_id, user_turn_number",
    "ops": "SELECT count(*) FROM {s}.ops",
    "migrations": "SELECT version, name FROM {s}.schema_migrations ORDER BY version",
    "policies": "SELECT tablename::text, policyname::text, cmd, roles::text, qual, with_check"
    " FROM pg_policies WHERE schemaname = %(name)s ORDER BY 1, 2",
    "rls": "SELECT c.relname::text, c.relrowsecurity, c.relforcerowsecurity,"
    " c.relowner::regrole::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = %(name)s AND c.relkind = 'r' ORDER BY 1",
    "table_grants": "SELECT table_name::text, grantee::text, privilege_type::text"
    " FROM information_schema.role_table_grants WHERE table_schema = %(name)s"
    " ORDER BY 1, 2, 3",
    "routine_grants": "SELECT routine_name::text, grantee::text, privilege_type::text"
    " FROM information_schema.routine_privileges WHERE routine_schema = %(name)s"
    " ORDER BY 1, 2, 3",
}


def snapshot(node: Node) -> dict[str, list[tuple[Any, ...]]]:
    return {
        key: node.execute(
            sql.SQL(query).format(s=sql.Identifier(SCHEMA)),
            {"name": SCHEMA},
        )
        for key, query in CATALOG.items()
    }


async def test_pg_dump_and_pg_restore_bring_back_grants_policies_and_every_session(
    servers: tuple[LocalCluster, LocalCluster, Path],
) -> None:
    source, target, work = servers
    p = source.primary
    for role in (OWNER, APP):
        p.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    p.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
        sql.Identifier(DBNAME), sql.Identifier(OWNER)))  # fmt: skip
    p.execute(sql.SQL("GRANT pg_monitor TO {}").format(sql.Identifier(APP)))
    owner_cfg = RouterConfig(hosts=as_role(p, OWNER), schema=SCHEMA, read_from_replicas=False)
    async with SessionRouter(owner_cfg) as owner:
        await migrate(owner, grant_to=APP, tenant_isolation=True)
    async with SessionRouter(RouterConfig(hosts=as_role(p, APP), schema=SCHEMA)) as app:
        for (tenant, sid), items in ITEMS.items():
            session = PostgresSession(sid, app, tenant=tenant, metadata={"t": tenant})
            await session.add_items(items)
            await session.store_run_usage(run_result(len(sid)))
    before = snapshot(p)
    assert len(before["messages"]) == 5 and len(before["policies"]) >= 3

    # the roles first (global objects, outside any database's dump), then the schema
    roles, dump = work / "roles.sql", work / "store.dump"
    tool(source, "pg_dumpall", "--roles-only", "--no-role-passwords", "-f", str(roles))
    tool(source, "pg_dump", "-Fc", "-n", SCHEMA, "-f", str(dump), DBNAME)
    # `role "postgres" already exists` is expected on a new server: not ON_ERROR_STOP
    tool(target, "psql", "-q", "-f", str(roles), "-d", "postgres")
    tool(target, "pg_restore", "--exit-on-error", "-d", DBNAME, str(dump))

    t = target.primary
    assert snapshot(t) == before
    owner_cfg = RouterConfig(hosts=as_role(t, OWNER), schema=SCHEMA, read_from_replicas=False)
    async with SessionRouter(owner_cfg) as owner:
        assert await migrate(owner) == []  # nothing to apply
        assert await tenant_isolation(owner)
    async with SessionRouter(RouterConfig(hosts=as_role(t, APP), schema=SCHEMA)) as app:
        assert await migrate(app) == []
        for (tenant, sid), items in ITEMS.items():
            session = PostgresSession(sid, app, tenant=tenant)
            assert await session.get_items() == items
            assert await session.get_metadata() == {"t": tenant}
            usage = await session.get_session_usage()
            assert usage is not None and usage["input_tokens"] == len(sid)
        # isolation still holds on the restored server: B sees nothing of A's
        assert await PostgresSession("a-1", app, tenant="B").get_items() == []
        # and the restored store takes writes
        await PostgresSession("a-1", app, tenant="A").add_items([user("after the restore")])
