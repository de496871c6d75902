-- pgsessions 0011: this cluster as a shard of a sharded set-up (ShardedRouter).
--
-- shard_identity names the shard and the set-up's bucket count (one row, written when the
-- set-up is made); shard_buckets holds the buckets this shard owns, each at an epoch that a
-- move raises. Both stay empty on a cluster served by a plain SessionRouter.
--
-- fence(bucket, epoch) runs in every write's transaction through a ShardedRouter: it
-- takes a share lock on the bucket and raises SQLSTATE PGS01 unless this shard owns the
-- bucket at that epoch. The share lock is a transaction-level advisory lock, not a row lock
-- (a row lock writes WAL and makes multixacts on every write); a trigger takes the same lock
-- exclusively for any change of shard_buckets, so a change waits for the writes in flight on
-- its bucket and the writes after it see it. owns(bucket, epoch) is the same check without a
-- lock, for reads (also on replicas).

CREATE TABLE {schema}.shard_identity (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    name text NOT NULL CHECK (name <> ''),
    buckets integer NOT NULL CHECK (buckets > 0),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE {schema}.shard_buckets (
    bucket integer PRIMARY KEY CHECK (bucket >= 0),
    epoch bigint NOT NULL CHECK (epoch > 0),
    owned_since timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION {schema}.bucket_lock_key(p_bucket integer) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (hashtext('{schema}.shard_buckets')::bigint << 32) | p_bucket::bigint
$$;

CREATE FUNCTION {schema}.fence(p_bucket integer, p_epoch bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_epoch bigint;
BEGIN
    PERFORM pg_advisory_xact_lock_shared({schema}.bucket_lock_key(p_bucket));
    SELECT b.epoch INTO v_epoch FROM {schema}.shard_buckets b WHERE b.bucket = p_bucket;
    IF v_epoch IS DISTINCT FROM p_epoch THEN
        RAISE EXCEPTION 'pgsessions: this shard does not own bucket % at epoch %',
                p_bucket, p_epoch
            USING ERRCODE = 'PGS01',
                  DETAIL = format('owned here at epoch: %s',
                                  coalesce(v_epoch::text, 'not owned')),
                  HINT = 'the directory moved: the router refreshes it and retries on the owner';
    END IF;
END
$$;

-- The fence inside the write statement itself (no statement of its own): the write passes
-- its session id through it, e.g. CALL add_items_checked_committed(fenced(b, e, id), ...).
-- Arguments are evaluated once, before the write runs, in its transaction.
CREATE FUNCTION {schema}.fenced(p_bucket integer, p_epoch bigint, p_session text) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM {schema}.fence(p_bucket, p_epoch);
    RETURN p_session;
END
$$;

CREATE FUNCTION {schema}.owns(p_bucket integer, p_epoch bigint) RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM {schema}.shard_buckets b
                    WHERE b.bucket = p_bucket AND b.epoch = p_epoch) THEN
        RAISE EXCEPTION 'pgsessions: this shard does not own bucket % at epoch %',
                p_bucket, p_epoch
            USING ERRCODE = 'PGS01',
                  HINT = 'the directory moved: the router refreshes it and retries on the owner';
    END IF;
END
$$;

-- Any change of a bucket's ownership waits for the writes in flight on it (fence's lock).
CREATE FUNCTION {schema}.shard_buckets_fenced() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_advisory_xact_lock({schema}.bucket_lock_key(OLD.bucket));
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        PERFORM pg_advisory_xact_lock({schema}.bucket_lock_key(NEW.bucket));
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$$;

CREATE TRIGGER shard_buckets_fenced BEFORE INSERT OR UPDATE OR DELETE
    ON {schema}.shard_buckets FOR EACH ROW EXECUTE FUNCTION {schema}.shard_buckets_fenced();

-- The directory as this shard holds it: one row (no row before the set-up is made).
CREATE FUNCTION {schema}.shard_directory()
RETURNS TABLE (name text, buckets integer, owned integer[], epochs bigint[])
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT i.name, i.buckets,
           coalesce(array_agg(b.bucket ORDER BY b.bucket) FILTER (WHERE b.bucket IS NOT NULL),
                    '{}'),
           coalesce(array_agg(b.epoch ORDER BY b.bucket) FILTER (WHERE b.bucket IS NOT NULL),
                    '{}')
      FROM {schema}.shard_identity i LEFT JOIN {schema}.shard_buckets b ON true
     GROUP BY i.name, i.buckets
$$;

-- New routines: EXECUTE only for the owner and the roles that may already run add_items.
REVOKE EXECUTE ON ALL ROUTINES IN SCHEMA {schema} FROM PUBLIC;
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT DISTINCT a.grantee::regrole::text AS grantee
          FROM pg_proc p, aclexplode(p.proacl) a
         WHERE p.oid = '{schema}.add_items_checked(text, uuid, json[], text[], text[], jsonb, boolean)'::regprocedure
           AND a.privilege_type = 'EXECUTE' AND a.grantee <> 0 AND a.grantee <> p.proowner
    LOOP
        EXECUTE 'GRANT EXECUTE ON FUNCTION {schema}.fence(integer, bigint) TO ' || r.grantee;
        EXECUTE 'GRANT EXECUTE ON FUNCTION {schema}.fenced(integer, bigint, text) TO '
             || r.grantee;
        EXECUTE 'GRANT EXECUTE ON FUNCTION {schema}.owns(integer, bigint) TO ' || r.grantee;
        EXECUTE 'GRANT EXECUTE ON FUNCTION {schema}.shard_directory() TO ' || r.grantee;
        EXECUTE 'GRANT EXECUTE ON FUNCTION {schema}.bucket_lock_key(integer) TO ' || r.grantee;
    END LOOP;
END
$$;
