-- pgsessions 0015: a replica read waits for its position on the server.
--
-- A read that must see a write the replica has not replayed yet used to send its replay
-- check and its query together, throw the rows away when the check fell short, poll the
-- replica from the client every 2 ms and send the query again. Under a steady stream of
-- turns (a read right after its own write) that was most replica reads: a wasted read each.
-- Now the read's pipeline starts with wait_replay(position, seconds): the replica's backend
-- sleeps in 1 ms steps (pg_sleep's finest) until it has replayed the position or the
-- seconds are over, and the query that follows runs once, after it (read committed: it
-- takes its snapshot after the wait). The answer is the replay position reached: the
-- caller checks it before using the rows. NULL on a primary. SECURITY INVOKER, no table:
-- any role may run it.

CREATE FUNCTION {schema}.wait_replay(p_lsn pg_lsn, p_seconds double precision) RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_at    pg_lsn := pg_last_wal_replay_lsn();
    v_until timestamptz;
BEGIN
    IF v_at IS NULL OR v_at >= p_lsn OR p_seconds <= 0 THEN
        RETURN v_at::text;
    END IF;
    v_until := clock_timestamp() + make_interval(secs => p_seconds);
    LOOP
        PERFORM pg_sleep(0.001);
        v_at := pg_last_wal_replay_lsn();
        EXIT WHEN v_at >= p_lsn OR clock_timestamp() >= v_until;
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
        EXECUTE 'GRANT EXECUTE ON FUNCTION {schema}.wait_replay(pg_lsn, double precision) TO '
            || r.grantee;
    END LOOP;
END
$$;
