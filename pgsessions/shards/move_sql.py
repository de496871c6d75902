"""The statements a bucket move runs on the source and target primaries (migration 0013's
shard_moves, shard_buckets of 0011, and PostgreSQL's logical replication catalogs)."""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql

#: the phases a move records in shard_moves, in order ('aborted': rolled back)
PHASES = ("copying", "fenced", "flipped", "done")
FINISHED = ("done", "aborted")


def move_object(move_id: str) -> str:
    """The name of a move's publication, subscription and replication slot."""
    return f"pgs_move_{move_id}"


def lock_key(schema: str) -> str:
    """The advisory lock a mover holds on the source while it works (one at a time)."""
    return f"pgsessions.move:{schema}"


#: the tables that hold conversations' rows: every table of the schema with a session_id
#: and a bucket column (0012: conversations, messages, usage_logs, branches, tenant_ops)
SESSION_TABLES = (
    "SELECT c.relname::text FROM pg_class c"
    " WHERE c.relnamespace = %s::regnamespace AND c.relkind = 'r'"
    " AND EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = c.oid"
    "             AND a.attname = 'bucket' AND NOT a.attisdropped)"
    " AND EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = c.oid"
    "             AND a.attname = 'session_id' AND NOT a.attisdropped)"
    " ORDER BY 1"
)

#: (wal_level, free slots, rolsuper, rolreplication, rolbypassrls, in recovery)
SOURCE_CHECKS = (
    "SELECT current_setting('wal_level'),"
    " current_setting('max_replication_slots')::int"
    "   - (SELECT count(*) FROM pg_replication_slots)::int,"
    " r.rolsuper, r.rolreplication, r.rolbypassrls, pg_is_in_recovery()"
    " FROM pg_roles r WHERE r.rolname = current_user"
)
#: (rolsuper, in recovery, max_sync_workers_per_subscription)
TARGET_CHECKS = (
    "SELECT r.rolsuper, pg_is_in_recovery(),"
    " current_setting('max_sync_workers_per_subscription')::int"
    " FROM pg_roles r WHERE r.rolname = current_user"
)
#: (system identifier, database): where a subscription would connect
CLUSTER_ID = "SELECT (SELECT system_identifier::text FROM pg_control_system()), current_database()"
SLOT = (
    "SELECT active, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,"
    " confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s"
)
#: whether the slot confirmed (the target applied and flushed) everything up to an LSN
SLOT_REACHED = (
    "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s"
)
CURRENT_LSN = "SELECT pg_current_wal_lsn()::text"
#: the timeline this primary writes its WAL on (a promoted replica starts a new one)
TIMELINE = "SELECT ('x' || left(pg_walfile_name(pg_current_wal_lsn()), 8))::bit(32)::int"
#: the comment of a subscription: the target's timeline when it was created
SUBSCRIPTION_TIMELINE = (
    "SELECT obj_description(oid, 'pg_subscription') FROM pg_subscription WHERE subname = %s"
)
#: every physical standby streaming from this primary has flushed %s (logical walsenders,
#: the moves' own, are left out): a failover of the source cannot lose the fence
STANDBYS_FLUSHED = (
    "SELECT coalesce(bool_and(r.flush_lsn >= %s::pg_lsn), true) FROM pg_stat_replication r"
    " WHERE NOT EXISTS (SELECT FROM pg_replication_slots s"
    " WHERE s.active_pid = r.pid AND s.slot_type = 'logical')"
)
DROP_SLOT = (
    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
    " WHERE slot_name = %s AND NOT active"
)
#: (tables, tables ready) of a subscription
SUBSCRIPTION_STATE = (
    "SELECT count(r.srrelid)::int, count(r.srrelid) FILTER (WHERE r.srsubstate = 'r')::int"
    " FROM pg_subscription s LEFT JOIN pg_subscription_rel r ON r.srsubid = s.oid"
    " WHERE s.subname = %s GROUP BY s.oid"
)
#: rows copied so far by a subscription's table synchronisation (PostgreSQL 14+)
COPY_PROGRESS = (
    "SELECT coalesce(sum(p.tuples_processed), 0)::bigint FROM pg_stat_progress_copy p"
    " JOIN pg_class c ON c.oid = p.relid WHERE c.relnamespace = %s::regnamespace"
)
#: (estimated rows, bytes with indexes and TOAST) of a shard's session tables
SIZES = (
    "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint,"
    " coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c"
    " WHERE c.relnamespace = %s::regnamespace AND c.relkind = 'r'"
    " AND c.relname IN ('conversations', 'messages', 'usage_logs', 'branches', 'tenant_ops')"
)
PUBLICATION_EXISTS = "SELECT EXISTS (SELECT FROM pg_publication WHERE pubname = %s)"
SUBSCRIPTION_EXISTS = "SELECT EXISTS (SELECT FROM pg_subscription WHERE subname = %s)"
LEFTOVER_PUBLICATIONS = (
    "SELECT pubname::text FROM pg_publication WHERE pubname LIKE 'pgs_move_%' ORDER BY 1"
)
LEFTOVER_SUBSCRIPTIONS = (
    "SELECT subname::text FROM pg_subscription WHERE subname LIKE 'pgs_move_%' ORDER BY 1"
)
LEFTOVER_SLOTS = (
    "SELECT slot_name::text, active,"
    " pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint"
    " FROM pg_replication_slots WHERE slot_name LIKE 'pgs_move_%' ORDER BY 1"
)


def q(schema: str) -> str:
    return sql.Identifier(schema).as_string(None)


def version(schema: str) -> str:
    return f"SELECT max(version) FROM {q(schema)}.schema_migrations"


def has_moves_table(schema: str) -> str:
    return f"SELECT to_regclass('{q(schema)}.shard_moves') IS NOT NULL"


def unfinished(schema: str) -> str:
    """(id, source, target, buckets, epochs, phase) of the move in progress, if any."""
    return (
        f"SELECT id, source, target, buckets, epochs, phase FROM {q(schema)}.shard_moves"
        " WHERE phase NOT IN ('done', 'aborted')"
    )


def moves(schema: str) -> str:
    return (
        f"SELECT id, source, target, buckets, phase, rows_moved, started_at::text,"
        f" finished_at::text FROM {q(schema)}.shard_moves ORDER BY started_at DESC LIMIT %s"
    )


def record(schema: str) -> str:
    return (
        f"INSERT INTO {q(schema)}.shard_moves (id, source, target, buckets, epochs, phase)"
        " VALUES (%s, %s, %s, %s, %s, 'copying')"
    )


def set_phase(schema: str) -> str:
    return (
        f"UPDATE {q(schema)}.shard_moves SET phase = %s, updated_at = now(),"
        " finished_at = CASE WHEN %s IN ('done', 'aborted') THEN now() END,"
        " rows_moved = coalesce(%s, rows_moved) WHERE id = %s"
    )


def owned(schema: str) -> str:
    """(bucket, epoch) of the given buckets that this shard owns."""
    return (
        f"SELECT bucket, epoch FROM {q(schema)}.shard_buckets WHERE bucket = ANY(%s)"
        " ORDER BY bucket"
    )


def give_up(schema: str) -> str:
    """The fence: the source lets the buckets go (waits for the writes in flight on them)."""
    return f"DELETE FROM {q(schema)}.shard_buckets WHERE bucket = ANY(%s) RETURNING bucket, epoch"


def take(schema: str) -> str:
    """The target takes the buckets, each at the epoch given."""
    return (
        f"INSERT INTO {q(schema)}.shard_buckets (bucket, epoch)"
        " SELECT b, e FROM unnest(%s::integer[], %s::bigint[]) AS t(b, e)"
        " ON CONFLICT (bucket) DO NOTHING"
    )


def any_rows(schema: str, table: str) -> sql.Composed:
    return sql.SQL("SELECT EXISTS (SELECT FROM {}.{} WHERE bucket = ANY(%s))").format(
        sql.Identifier(schema), sql.Identifier(table)
    )


def count_rows(schema: str, table: str) -> sql.Composed:
    return sql.SQL("SELECT count(*) FROM {}.{} WHERE bucket = ANY(%s)").format(
        sql.Identifier(schema), sql.Identifier(table)
    )


def delete_batch(schema: str, table: str) -> sql.Composed:
    """Delete up to %s rows of the buckets from ``table`` (conversations: with their rows
    of messages, by the conversation_gone trigger, and of usage_logs, by its foreign key)."""
    s, t = sql.Identifier(schema), sql.Identifier(table)
    return sql.SQL(
        "DELETE FROM {s}.{t} WHERE ctid = ANY (ARRAY("
        "SELECT ctid FROM {s}.{t} WHERE bucket = ANY(%s) LIMIT %s))"
    ).format(s=s, t=t)


def create_publication(
    schema: str, name: str, tables: Sequence[str], buckets: Sequence[int]
) -> sql.Composed:
    # a row filter takes constants only (no casts): bucket IN (1, 2, ...)
    values = sql.SQL(", ").join(sql.SQL(str(int(b))) for b in buckets)
    parts = sql.SQL(", ").join(
        sql.SQL("{}.{} WHERE (bucket IN ({}))").format(
            sql.Identifier(schema), sql.Identifier(t), values
        )
        for t in tables
    )
    return sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(sql.Identifier(name), parts)


def create_subscription(name: str, conninfo: str) -> sql.Composed:
    return sql.SQL(
        "CREATE SUBSCRIPTION {n} CONNECTION {c} PUBLICATION {n}"
        " WITH (copy_data = true, create_slot = true, slot_name = {s},"
        " synchronous_commit = 'on')"
    ).format(n=sql.Identifier(name), c=sql.Literal(conninfo), s=sql.Literal(name))


def comment_subscription(name: str, timeline: int) -> sql.Composed:
    return sql.SQL("COMMENT ON SUBSCRIPTION {} IS {}").format(
        sql.Identifier(name), sql.Literal(f"timeline {int(timeline)}")
    )


def drop_subscription(name: str) -> sql.Composed:
    return sql.SQL("DROP SUBSCRIPTION IF EXISTS {}").format(sql.Identifier(name))


def detach_subscription(name: str) -> list[sql.Composed]:
    """A subscription without its slot (dropping it then leaves the publisher alone)."""
    n = sql.Identifier(name)
    return [
        sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(n),
        sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(n),
    ]


def drop_publication(name: str) -> sql.Composed:
    return sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(name))
