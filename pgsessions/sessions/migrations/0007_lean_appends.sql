-- pgsessions 0007: fewer WAL bytes per add_items (issue 16).
-- 1. The conversation row is updated HOT (heap-only: no new index entries) on an add: no
--    index covers updated_at any more. list_sessions orders by a per-minute bucket of it
--    (active_at, indexed; it changes at most once a minute per conversation), then by
--    updated_at itself, which gives exactly the order of updated_at. fillfactor leaves room
--    on each page for the new row versions.
-- 2. An add writes no ops row (a heap row and two index entries): its operation id is stored
--    on the batch's first message, under a partial unique index on the id alone. A retry (p_recheck) first
--    waits for any delivery of the same id still in flight, then looks the id up; an id whose
--    message is removed (pop, clear, compaction) moves to ops, so a late replay still finds it.
-- 3. Pruning operation ids leaves the writers' transactions: run prune_ops from a maintenance
--    job (`pgsessions prune`). add_items no longer calls it.

ALTER TABLE {schema}.conversations SET (fillfactor = 70);
ALTER TABLE {schema}.conversations
    ADD COLUMN active_at timestamptz
    GENERATED ALWAYS AS (date_bin('1 minute', updated_at, timestamptz '2000-01-01 00:00:00+00'))
    STORED;
-- list_sessions names its tenant ('' without one, migration 0006); maintenance and reports
-- across tenants (prune, the largest conversations) read active_at alone
DROP INDEX {schema}.conversations_tenant_updated_idx;
CREATE INDEX conversations_tenant_active_idx ON {schema}.conversations (tenant, active_at);
CREATE INDEX conversations_active_idx ON {schema}.conversations (active_at);

ALTER TABLE {schema}.messages ADD COLUMN op uuid;
-- op alone (a time-ordered UUID, see sessions/opids.py): a short key, appended at the right end
CREATE UNIQUE INDEX messages_op_key ON {schema}.messages (op) WHERE op IS NOT NULL;

-- Whether operation p_op of p_session was applied (and not pruned).
CREATE FUNCTION {schema}.op_applied(p_session text, p_op uuid) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM {schema}.messages m
                    WHERE m.session_id = p_session AND m.op = p_op)
        OR EXISTS (SELECT 1 FROM {schema}.ops o
                    WHERE o.session_id = p_session AND o.op_id = p_op)
$$;

-- Append one batch; true when applied, false when p_op was applied already.
-- p_recheck false (a first delivery): p_op is new unless a retry overtook this delivery; the
-- unique index on messages (session_id, op) then refuses it (unique_violation, the whole
-- transaction rolls back: the batch stays applied once). p_recheck true (a retry): lock the
-- conversation row first, so that a delivery still in flight commits before the lookup.
CREATE FUNCTION {schema}.add_items_checked(
    p_session  text,
    p_op       uuid,
    p_items    json[],
    p_roles    text[],
    p_types    text[],
    p_metadata jsonb,
    p_recheck  boolean
) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n         integer := coalesce(cardinality(p_items), 0);
    first_seq bigint;
    v_created boolean := false;
BEGIN
    IF n = 0 THEN
        RETURN true;  -- nothing to apply (sessions never send an empty batch)
    END IF;
    IF p_recheck THEN
        -- bounded: a row that exists but stays invisible (another tenant's, under row-level
        -- security) would loop forever; the upsert below then raises the policy violation
        FOR attempt IN 1..3 LOOP
            PERFORM 1 FROM {schema}.conversations WHERE session_id = p_session FOR UPDATE;
            EXIT WHEN FOUND;
            -- waits for a delivery that is creating the conversation right now
            INSERT INTO {schema}.conversations (session_id, metadata)
            VALUES (p_session, coalesce(p_metadata, '{}'::jsonb))
            ON CONFLICT (session_id) DO NOTHING;
            v_created := FOUND;
            EXIT WHEN v_created;
        END LOOP;
        IF {schema}.op_applied(p_session, p_op) THEN
            IF v_created THEN
                DELETE FROM {schema}.conversations WHERE session_id = p_session;
            END IF;
            RETURN false;
        END IF;
    ELSIF EXISTS (SELECT 1 FROM {schema}.ops o WHERE o.session_id = p_session AND o.op_id = p_op)
    THEN
        RETURN false;  -- a retry applied it and its message was removed since
    END IF;
    INSERT INTO {schema}.conversations AS c
           (session_id, metadata, next_seq, item_count, user_turns)
    VALUES (p_session, coalesce(p_metadata, '{}'::jsonb), 1 + n, n,
            (SELECT count(*) FROM unnest(p_roles) AS r(role) WHERE r.role = 'user'))
    ON CONFLICT (session_id) DO UPDATE
       SET next_seq   = c.next_seq + n,
           item_count = c.item_count + n,
           user_turns = c.user_turns + excluded.user_turns,
           updated_at = now()
    RETURNING c.next_seq - n INTO first_seq;
    INSERT INTO {schema}.messages (session_id, seq, item, role, type, op)
    SELECT p_session, first_seq + t.ord - 1, t.item, t.role, t.type,
           CASE WHEN t.ord = 1 THEN p_op END
      FROM unnest(p_items, p_roles, p_types) WITH ORDINALITY AS t(item, role, type, ord);
    RETURN true;
END
$$;

-- add_items_checked in its own transaction, committed (at least a local WAL flush), returning
-- whether it was applied and pg_current_wal_flush_lsn() after the commit. CALL it in
-- autocommit. SECURITY INVOKER: it commits (see 0005).
CREATE PROCEDURE {schema}.add_items_checked_committed(
    p_session  text,
    p_op       uuid,
    p_items    json[],
    p_roles    text[],
    p_types    text[],
    p_metadata jsonb,
    p_recheck  boolean,
    INOUT applied boolean DEFAULT NULL,
    INOUT token   text    DEFAULT NULL
)
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('synchronous_commit') = 'off' THEN
        PERFORM set_config('synchronous_commit', 'on', true);
    END IF;
    applied := {schema}.add_items_checked(
        p_session, p_op, p_items, p_roles, p_types, p_metadata, p_recheck);
    COMMIT;
    token := pg_current_wal_flush_lsn()::text;
END
$$;

-- The entry points of servers still on an older version: always the retry-safe path, and no
-- inline pruning any more.
CREATE OR REPLACE FUNCTION {schema}.add_items(
    p_session  text,
    p_op       uuid,
    p_items    json[],
    p_roles    text[],
    p_types    text[],
    p_metadata jsonb
) RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT {schema}.add_items_checked(p_session, p_op, p_items, p_roles, p_types, p_metadata, true)
$$;

-- pop_item as in 0004; popping the message that carries an add's operation id moves that id
-- to ops.
CREATE OR REPLACE FUNCTION {schema}.pop_item(p_session text, p_op uuid) RETURNS json
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_item  json;
    v_role  text;
    v_add   uuid;
    v_turns integer;
BEGIN
    INSERT INTO {schema}.ops (session_id, op_id) VALUES (p_session, p_op)
        ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        SELECT o.result INTO v_item FROM {schema}.ops o
         WHERE o.session_id = p_session AND o.op_id = p_op;
        RETURN v_item;
    END IF;
    SELECT c.user_turns INTO v_turns FROM {schema}.conversations c
     WHERE c.session_id = p_session FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    DELETE FROM {schema}.messages m
     WHERE m.session_id = p_session
       AND m.seq = (SELECT max(seq) FROM {schema}.messages WHERE session_id = p_session)
    RETURNING m.item, m.role, m.op INTO v_item, v_role, v_add;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF v_add IS NOT NULL THEN
        INSERT INTO {schema}.ops (session_id, op_id) VALUES (p_session, v_add)
            ON CONFLICT DO NOTHING;
    END IF;
    IF v_role = 'user' THEN
        DELETE FROM {schema}.usage_logs
         WHERE session_id = p_session AND user_turn_number >= v_turns;
    END IF;
    UPDATE {schema}.conversations
       SET item_count = item_count - 1,
           user_turns = user_turns - CASE WHEN v_role = 'user' THEN 1 ELSE 0 END,
           updated_at = now()
     WHERE session_id = p_session;
    UPDATE {schema}.ops SET result = v_item WHERE session_id = p_session AND op_id = p_op;
    RETURN v_item;
END
$$;

-- Keep the add operation ids of a conversation about to be deleted (younger than an hour:
-- older ones are pruned anyway).
CREATE FUNCTION {schema}.keep_add_ops(p_session text) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO {schema}.ops (session_id, op_id)
    SELECT m.session_id, m.op FROM {schema}.messages m
     WHERE m.session_id = p_session AND m.op IS NOT NULL
       AND m.created_at > now() - interval '1 hour'
    ON CONFLICT DO NOTHING
$$;

CREATE OR REPLACE FUNCTION {schema}.clear_session(p_session text, p_op uuid) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO {schema}.ops (session_id, op_id) VALUES (p_session, p_op)
        ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM 1 FROM {schema}.conversations WHERE session_id = p_session FOR UPDATE;
    PERFORM {schema}.keep_add_ops(p_session);
    DELETE FROM {schema}.conversations WHERE session_id = p_session;
    RETURN true;
END
$$;

CREATE OR REPLACE FUNCTION {schema}.clear_session(p_session text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM 1 FROM {schema}.conversations WHERE session_id = p_session FOR UPDATE;
    PERFORM {schema}.keep_add_ops(p_session);
    DELETE FROM {schema}.conversations WHERE session_id = p_session;
END
$$;

-- replace_suffix as in 0004; the operation ids on the messages it deletes move to ops.
CREATE OR REPLACE FUNCTION {schema}.replace_suffix(
    p_session        text,
    p_op             uuid,
    p_created        timestamptz,
    p_expected       bigint[],
    p_prune_through  bigint,
    p_items          json[],
    p_roles          text[],
    p_types          text[]
) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n         integer := coalesce(cardinality(p_items), 0);
    v_created timestamptz;
    v_current bigint[];
    v_removed bigint := 0;
    v_count   bigint;
    first_seq bigint;
BEGIN
    INSERT INTO {schema}.ops (session_id, op_id) VALUES (p_session, p_op)
        ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN (SELECT (o.result::text)::boolean FROM {schema}.ops o
                 WHERE o.session_id = p_session AND o.op_id = p_op);
    END IF;
    UPDATE {schema}.ops SET result = 'false'::json
     WHERE session_id = p_session AND op_id = p_op;
    SELECT c.created_at INTO v_created FROM {schema}.conversations c
     WHERE c.session_id = p_session FOR UPDATE;
    IF NOT FOUND OR v_created <> p_created OR coalesce(cardinality(p_expected), 0) = 0 THEN
        RETURN false;
    END IF;
    SELECT array_agg(t.seq ORDER BY t.seq) INTO v_current
      FROM (SELECT m.seq FROM {schema}.messages m WHERE m.session_id = p_session
             ORDER BY m.seq DESC LIMIT cardinality(p_expected)) t;
    IF v_current IS DISTINCT FROM p_expected THEN
        RETURN false;
    END IF;
    IF p_prune_through IS NOT NULL THEN
        WITH gone AS (
            DELETE FROM {schema}.messages
             WHERE session_id = p_session AND seq <= least(p_prune_through, p_expected[1] - 1)
            RETURNING op
        ), kept AS (
            INSERT INTO {schema}.ops (session_id, op_id)
            SELECT p_session, gone.op FROM gone WHERE gone.op IS NOT NULL
            ON CONFLICT DO NOTHING
        )
        SELECT count(*) INTO v_removed FROM gone;
    END IF;
    WITH gone AS (
        DELETE FROM {schema}.messages WHERE session_id = p_session AND seq >= p_expected[1]
        RETURNING op
    ), kept AS (
        INSERT INTO {schema}.ops (session_id, op_id)
        SELECT p_session, gone.op FROM gone WHERE gone.op IS NOT NULL
        ON CONFLICT DO NOTHING
    )
    SELECT count(*) INTO v_count FROM gone;
    v_removed := v_removed + v_count;
    UPDATE {schema}.conversations
       SET next_seq = next_seq + n,
           item_count = item_count - v_removed + n,
           updated_at = now()
     WHERE session_id = p_session
    RETURNING next_seq - n INTO first_seq;
    INSERT INTO {schema}.messages (session_id, seq, item, role, type)
    SELECT p_session, first_seq + t.ord - 1, t.item, t.role, t.type
      FROM unnest(p_items, p_roles, p_types) WITH ORDINALITY AS t(item, role, type, ord);
    UPDATE {schema}.ops SET result = 'true'::json
     WHERE session_id = p_session AND op_id = p_op;
    RETURN true;
END
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
         WHERE p.oid = '{schema}.add_items_committed(text, uuid, json[], text[], text[], jsonb, boolean, text)'::regprocedure
           AND a.privilege_type = 'EXECUTE' AND a.grantee <> 0 AND a.grantee <> p.proowner
    LOOP
        EXECUTE 'GRANT EXECUTE ON PROCEDURE {schema}.add_items_checked_committed'
             || '(text, uuid, json[], text[], text[], jsonb, boolean, boolean, text) TO '
             || r.grantee;
        EXECUTE 'GRANT EXECUTE ON FUNCTION {schema}.add_items_checked'
             || '(text, uuid, json[], text[], text[], jsonb, boolean) TO ' || r.grantee;
        EXECUTE 'GRANT EXECUTE ON FUNCTION {schema}.op_applied(text, uuid) TO ' || r.grantee;
        EXECUTE 'GRANT EXECUTE ON FUNCTION {schema}.keep_add_ops(text) TO ' || r.grantee;
    END LOOP;
END
$$;
