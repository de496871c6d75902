"""The statements a sharded router runs on its shards (the objects of migration 0011)."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql


@dataclass(frozen=True)
class ShardSql:
    """Statements for one schema."""

    #: (system identifier, database, whether migration 0011 is applied)
    identity: str
    #: (name, buckets, owned int[], epochs bigint[]); no row before the set-up is made
    directory: str
    #: the write's fence: (bucket, epoch); raises SQLSTATE PGS01 unless owned at that epoch
    fence: str
    #: the same check without a lock, for reads (replicas too)
    owns: str
    #: one transaction: the migrate lock, then (name, buckets) and (buckets int[]) at epoch 1
    lock: str
    claim_identity: str
    claim_buckets: str
    #: the buckets this shard fenced in a move not flipped yet (migration 0013's shard_moves)
    fenced_moves: str


def shard_sql(schema: str) -> ShardSql:
    qs = sql.Identifier(schema).as_string(None)
    return ShardSql(
        identity=(
            "SELECT (SELECT system_identifier::text FROM pg_control_system()),"
            " current_database()::text,"
            f" to_regprocedure('{qs}.shard_directory()') IS NOT NULL"
        ),
        directory=f"SELECT name, buckets, owned, epochs FROM {qs}.shard_directory()",
        fence=f"SELECT {qs}.fence(%s, %s)",
        owns=f"SELECT {qs}.owns(%s, %s)",
        lock="SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
        claim_identity=(
            f"INSERT INTO {qs}.shard_identity (name, buckets) VALUES (%s, %s)"
            " ON CONFLICT DO NOTHING"
        ),
        claim_buckets=(
            f"INSERT INTO {qs}.shard_buckets (bucket, epoch)"
            " SELECT b, 1 FROM unnest(%s::integer[]) AS b ON CONFLICT DO NOTHING"
        ),
        fenced_moves=(
            f"SELECT coalesce(array_agg(b), '{{}}') FROM {qs}.shard_moves m"
            " CROSS JOIN unnest(m.buckets) AS b WHERE m.phase = 'fenced'"
        ),
    )
