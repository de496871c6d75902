-- pgsessions 0003: add_items as a procedure that commits and returns the consistency token,
-- so a batch is one statement in one message (no BEGIN/COMMIT/token pipeline around it).

-- Apply add_items(...) in its own transaction, commit it (at least a local WAL flush), and
-- return whether it was applied and pg_current_wal_flush_lsn() after the commit. Must be
-- CALLed outside a transaction block (autocommit).
CREATE PROCEDURE {schema}.add_items_committed(
    p_session  text,
    p_op       uuid,
    p_items    json[],
    p_roles    text[],
    p_types    text[],
    p_metadata jsonb,
    INOUT applied boolean DEFAULT NULL,
    INOUT token   text    DEFAULT NULL
)
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('synchronous_commit') = 'off' THEN
        -- the token must cover the commit record: flush it locally at least
        PERFORM set_config('synchronous_commit', 'on', true);
    END IF;
    applied := {schema}.add_items(p_session, p_op, p_items, p_roles, p_types, p_metadata);
    COMMIT;
    token := pg_current_wal_flush_lsn()::text;
END
$$;
