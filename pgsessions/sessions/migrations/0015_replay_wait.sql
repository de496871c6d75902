-- pgsessions 0015: a replica read waits for its position on the server.
--
-- A read that must see a write the replica has not replayed yet used to send its replay
-- check and its query together, throw the rows away when the check fell short, poll the
-- replica from the client every 2 ms and send the query again. Under a steady stream of
-- turns (a read right after its own write) that was most replica reads: a wasted read each.
-- Now the read's pipeline starts with wait_replay(position, seconds, spin): the replica's
-- backend looks at its replay position for up to ``spin`` seconds without sleeping (a
-- router asks that only of a read alone on an idle replica), then sleeps in 1 ms steps
-- (pg_sleep's finest) until it has replayed the position or the seconds are over, and the
-- query that follows runs once, after it (read committed: it takes its snapshot after
-- the wait). The answer is the replay position reached: the caller checks it before using
-- the rows. NULL on a primary. SECURITY INVOKER, reads no table, no SET clause (it runs
-- on every read that waits; the catalog functions are named in full).

CREATE FUNCTION {schema}.wait_replay(p_lsn pg_lsn, p_seconds double precision,
                                      p_spin double precision DEFAULT 0) RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL SAFE AS $$
DECLARE
    v_at    pg_lsn := pg_catalog.pg_last_wal_replay_lsn();
    v_spin  timestamptz;
    v_until timestamptz;
BEGIN
    IF v_at IS NULL OR v_at >= p_lsn OR p_seconds <= 0 THEN
        RETURN v_at::text;
    END IF;
    v_spin := pg_catalog.clock_timestamp()
              + pg_catalog.make_interval(secs => least(p_spin, p_seconds));
    v_until := pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => p_seconds);
    -- a read alone on an idle replica: replay is most often there in well under 1 ms,
    -- pg_sleep's finest step, so look without sleeping first
    WHILE v_at < p_lsn AND pg_catalog.clock_timestamp() < v_spin LOOP
        v_at := pg_catalog.pg_last_wal_replay_lsn();
    END LOOP;
    WHILE v_at < p_lsn AND pg_catalog.clock_timestamp() < v_until LOOP
        PERFORM pg_catalog.pg_sleep(0.001);
        v_at := pg_catalog.pg_last_wal_replay_lsn();
    END LOOP;
    RETURN v_at::text;
END
$$;

-- EXECUTE for the owner and the roles that may already run add_items (0005: none for PUBLIC)
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
        EXECUTE 'GRANT EXECUTE ON FUNCTION {schema}.wait_replay(pg_lsn, double precision,'
            || ' double precision) TO ' || r.grantee;
    END LOOP;
END
$$;
