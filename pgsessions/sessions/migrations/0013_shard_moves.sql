-- pgsessions 0013: bucket moves between shards (pgsessions.shards.move), recorded on the
-- shard the buckets leave, so that a mover started again after a crash resumes the move from
-- its phase (or rolls it back) instead of starting another.
--
-- phase: 'copying' (publication on the source, subscription on the target, the initial copy
-- and the catch-up), 'fenced' (the source gave the buckets up in the same transaction that
-- set this phase: every write to them is refused, no shard owns them), 'flipped' (the target
-- owns them at epoch + 1), then 'done' once the subscription, publication and slot are
-- dropped and the source's rows of the buckets deleted; 'aborted': rolled back before the
-- flip. epochs are the source's epochs of the buckets when the move started.

CREATE TABLE {schema}.shard_moves (
    id text PRIMARY KEY CHECK (id ~ '^[a-z0-9_]{1,40}$'),
    source text NOT NULL,
    target text NOT NULL CHECK (target <> source),
    buckets integer[] NOT NULL CHECK (cardinality(buckets) > 0),
    epochs bigint[] NOT NULL CHECK (cardinality(epochs) = cardinality(buckets)),
    phase text NOT NULL
        CHECK (phase IN ('copying', 'fenced', 'flipped', 'done', 'aborted')),
    rows_moved bigint,
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

-- at most one unfinished move per source shard (the mover also holds an advisory lock)
CREATE UNIQUE INDEX shard_moves_one_at_a_time ON {schema}.shard_moves ((true))
    WHERE phase NOT IN ('done', 'aborted');
