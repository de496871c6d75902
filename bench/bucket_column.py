"""What the bucket column (migration 0012) costs an append, measured on the primary.

``python -m bench.bucket_column [--calls 6000] [--rounds 12]`` starts a local cluster (no
replica, fsync off) and migrates three schemas: ``before`` (migrations up to 0011: no bucket
column), ``shipped`` (every migration), and ``per_item`` (every migration, with an
add_items_checked that leaves each message's bucket to the BEFORE INSERT trigger instead of
passing it). Each round runs ``--calls`` add_items_checked calls of 4 items over 500
conversations in one server-side loop per schema (rotating the order) and reads the
backend's CPU time from /proc: what the primary spends per append, without the client or
the network. Prints the median and the best round per schema, and the table sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
from pathlib import Path
from typing import Any

import psycopg

from pgsessions import RouterConfig, SessionRouter, migrate
from pgsessions.devcluster import LocalCluster
from pgsessions.sessions import load_migrations
from pgsessions.sessions.sql.fragments import quote_ident

MIGRATION = (
    Path(__file__).resolve().parent.parent
    / "pgsessions"
    / "sessions"
    / "migrations"
    / "0012_bucket_column.sql"
)

LOOP = """
DO $$
BEGIN
  FOR i IN 1..{n} LOOP
    PERFORM {s}.add_items_checked('sess-' || (i % 500), gen_random_uuid(),
        ARRAY['{{"role":"user","content":"hello there, how are you"}}',
              '{{"role":"assistant","content":"fine"}}',
              '{{"type":"function_call","name":"x"}}',
              '{{"type":"function_call_output","output":"y"}}']::json[],
        ARRAY['user', 'assistant', NULL, NULL],
        ARRAY['message', 'message', 'function_call', 'function_call_output'], NULL, false);
  END LOOP;
END $$"""

SCHEMAS = ("before", "shipped", "per_item")


def per_item_add_items() -> str:
    """The shipped add_items_checked, its messages inserted without their bucket."""
    text = MIGRATION.read_text()
    start = text.index("CREATE OR REPLACE FUNCTION {schema}.add_items_checked(")
    end = text.index("-- store_usage as in 0010")
    body = text[start:end]
    out = body.replace(
        "INSERT INTO {schema}.messages (session_id, bucket, branch_id,",
        "INSERT INTO {schema}.messages (session_id, branch_id,",
    ).replace("SELECT p_session, v_bucket, v_branch,", "SELECT p_session, v_branch,")
    if out == body:
        raise RuntimeError("add_items_checked of 0012 changed: update this bench")
    return out


def backend_cpu(pid: int) -> float:
    """User + system CPU seconds of one server process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(calls: int, rounds: int) -> dict[str, Any]:
    cluster = LocalCluster(replicas=0, fsync=False)
    cluster.start()
    try:
        older = [m for m in load_migrations() if m.version < "0012"]
        for name in SCHEMAS:
            async with SessionRouter(RouterConfig(hosts=cluster.dsns(), schema=name)) as r:
                await migrate(r, migrations=older if name == "before" else None)
        with psycopg.connect(cluster.primary.dsn, autocommit=True) as conn:
            conn.execute(per_item_add_items().replace("{schema}", quote_ident("per_item")))
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert row is not None
            pid = int(row[0])
            per_call: dict[str, list[float]] = {s: [] for s in SCHEMAS}
            for rnd in range(rounds):
                order = SCHEMAS[rnd % 3 :] + SCHEMAS[: rnd % 3]
                for name in order:
                    s = quote_ident(name)
                    conn.execute(
                        f"TRUNCATE {s}.conversations, {s}.messages, {s}.tenant_ops CASCADE"
                    )
                    t0 = backend_cpu(pid)
                    conn.execute(LOOP.format(n=calls, s=s).encode())
                    per_call[name].append((backend_cpu(pid) - t0) / calls * 1e6)
            sizes = {}
            for name in SCHEMAS:
                s = quote_ident(name)
                got = conn.execute(
                    f"SELECT pg_total_relation_size('{s}.messages'),"
                    f" pg_total_relation_size('{s}.conversations')"
                ).fetchone()
                assert got is not None
                sizes[name] = {"messages_bytes": got[0], "conversations_bytes": got[1]}
    finally:
        cluster.stop()
    return {
        name: {
            "median_us": round(statistics.median(v), 1),
            "best_us": round(min(v), 1),
            **sizes[name],
        }
        for name, v in per_call.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bucket_column")
    parser.add_argument("--calls", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    result = asyncio.run(run(args.calls, args.rounds))
    base = result["before"]["median_us"]
    print("schema     median us  best us  vs before  messages bytes  conversations bytes")
    for name, r in result.items():
        print(
            f"{name:<10} {r['median_us']:>9} {r['best_us']:>8} {r['median_us'] / base:>9.2f}"
            f" {r['messages_bytes']:>15} {r['conversations_bytes']:>20}"
        )


if __name__ == "__main__":
    main()
