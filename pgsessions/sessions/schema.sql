-- The pgsessions schema as every migration leaves it (pg_dump --schema-only, no owners
-- or grants; {schema} stands for the schema's name). Generated, not applied: the
-- migrations in migrations/ are what migrate() runs; a test keeps this file equal to
-- them (tests/integration/test_schema_snapshot.py).

CREATE SCHEMA {schema};

CREATE FUNCTION {schema}.add_items(p_session text, p_op uuid, p_items json[], p_roles text[], p_types text[], p_metadata jsonb) RETURNS boolean
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT {schema}.add_items_checked(p_session, p_op, p_items, p_roles, p_types, p_metadata, true)
$$;

CREATE FUNCTION {schema}.add_items_checked(p_session text, p_op uuid, p_items json[], p_roles text[], p_types text[], p_metadata jsonb, p_recheck boolean) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    n         integer := coalesce(cardinality(p_items), 0);
    first_seq bigint;
    v_branch  text;
    v_bucket  integer;
    v_users   integer;
    v_created boolean := false;
BEGIN
    IF n = 0 THEN
        RETURN true;
    END IF;
    IF p_recheck THEN
        FOR attempt IN 1..3 LOOP
            PERFORM 1 FROM {schema}.conversations WHERE session_id = p_session FOR UPDATE;
            EXIT WHEN FOUND;
            INSERT INTO {schema}.conversations (session_id, metadata)
            VALUES (p_session, coalesce(p_metadata, '{}'::jsonb))
            ON CONFLICT (session_id, bucket) DO NOTHING;
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
        RETURN false;
    END IF;
    v_users := (SELECT count(*) FROM unnest(p_roles) AS r(role) WHERE r.role = 'user');
    -- the conversation exists on every write but its first: an update by session_id needs
    -- no bucket (computing one costs a SHA-256); the upsert covers a first write
    UPDATE {schema}.conversations AS c
       SET next_seq   = c.next_seq + n,
           item_count = c.item_count + n,
           user_turns = c.user_turns + v_users,
           updated_at = now()
     WHERE c.session_id = p_session
    RETURNING c.next_seq - n, c.current_branch, c.bucket INTO first_seq, v_branch, v_bucket;
    IF NOT FOUND THEN
        INSERT INTO {schema}.conversations AS c
               (session_id, metadata, next_seq, item_count, user_turns)
        VALUES (p_session, coalesce(p_metadata, '{}'::jsonb), 1 + n, n, v_users)
        ON CONFLICT (session_id, bucket) DO UPDATE
           SET next_seq   = c.next_seq + n,
               item_count = c.item_count + n,
               user_turns = c.user_turns + excluded.user_turns,
               updated_at = now()
        RETURNING c.next_seq - n, c.current_branch, c.bucket INTO first_seq, v_branch, v_bucket;
    END IF;
    INSERT INTO {schema}.messages (session_id, bucket, branch_id, seq, item, role, type, op)
    SELECT p_session, v_bucket, v_branch, first_seq + t.ord - 1, t.item, t.role, t.type,
           CASE WHEN t.ord = 1 THEN p_op END
      FROM unnest(p_items, p_roles, p_types) WITH ORDINALITY AS t(item, role, type, ord);
    RETURN true;
END
$$;

CREATE PROCEDURE {schema}.add_items_checked_committed(IN p_session text, IN p_op uuid, IN p_items json[], IN p_roles text[], IN p_types text[], IN p_metadata jsonb, IN p_recheck boolean, INOUT applied boolean DEFAULT NULL::boolean, INOUT token text DEFAULT NULL::text)
    LANGUAGE plpgsql
    AS $$
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

CREATE PROCEDURE {schema}.add_items_committed(IN p_session text, IN p_op uuid, IN p_items json[], IN p_roles text[], IN p_types text[], IN p_metadata jsonb, INOUT applied boolean DEFAULT NULL::boolean, INOUT token text DEFAULT NULL::text)
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION {schema}.branch_error(p_message text) RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
    RAISE EXCEPTION '%', p_message
        USING ERRCODE = 'invalid_parameter_value', DETAIL = 'pgsessions:branch';
END
$$;

CREATE FUNCTION {schema}.branch_items(p_session text, p_branch text, p_limit bigint) RETURNS TABLE(seq bigint, item json, role text, type text, created_at timestamp with time zone, src text)
    LANGUAGE sql STABLE
    AS $$
    WITH cur AS MATERIALIZED (
        SELECT k.id, d.anc, d.upto, d.deleted_at
          FROM (SELECT coalesce(p_branch,
                                (SELECT c.current_branch FROM {schema}.conversations c
                                  WHERE c.session_id = p_session),
                                'main') AS id) k
          LEFT JOIN {schema}.branches d ON d.session_id = p_session AND d.branch_id = k.id
    )
    SELECT u.seq, u.item, u.role, u.type, u.created_at, u.src FROM (
        (SELECT m.seq, m.item, m.role, m.type, m.created_at, m.branch_id AS src
           FROM {schema}.messages m
          WHERE m.session_id = p_session
            AND m.branch_id = (SELECT cur.id FROM cur WHERE cur.deleted_at IS NULL)
          ORDER BY m.seq DESC LIMIT p_limit)
        UNION ALL
        (SELECT x.seq, x.item, x.role, x.type, x.created_at, x.src
           FROM cur
          CROSS JOIN LATERAL unnest(cur.anc, cur.upto) AS s(anc, upto)
          CROSS JOIN LATERAL (
                SELECT m.seq, m.item, m.role, m.type, m.created_at, m.branch_id AS src
                  FROM {schema}.messages m
                 WHERE m.session_id = p_session AND m.branch_id = s.anc AND m.seq <= s.upto
                 ORDER BY m.seq DESC LIMIT p_limit) x
          WHERE cur.deleted_at IS NULL)
    ) u ORDER BY u.seq DESC LIMIT p_limit
$$;

CREATE FUNCTION {schema}.branch_of(p_session text, p_branch text) RETURNS text
    LANGUAGE sql STABLE
    AS $$
    SELECT coalesce(p_branch,
                    (SELECT c.current_branch FROM {schema}.conversations c
                      WHERE c.session_id = p_session),
                    'main')
$$;

CREATE FUNCTION {schema}.branch_user_turns(p_session text, p_branch text) RETURNS integer
    LANGUAGE sql STABLE
    AS $$
    SELECT CASE
        WHEN p_branch = 'main' AND NOT EXISTS (
            SELECT 1 FROM {schema}.branches b
             WHERE b.session_id = p_session AND b.deleted_at IS NULL)
        THEN (SELECT c.user_turns FROM {schema}.conversations c WHERE c.session_id = p_session)
        ELSE (SELECT count(*)::integer FROM {schema}.branch_items(p_session, p_branch, NULL) t
               WHERE t.role = 'user')
    END
$$;

CREATE FUNCTION {schema}.bucket_count() RETURNS integer
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$
    SELECT coalesce((SELECT i.buckets FROM {schema}.shard_identity i), 1024)
$$;

CREATE FUNCTION {schema}.bucket_lock_key(p_bucket integer) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT (hashtext('{schema}.shard_buckets')::bigint << 32) | p_bucket::bigint
$$;

CREATE FUNCTION {schema}.bucket_of(p_session text, p_buckets integer) RETURNS integer
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
    AS $$
DECLARE
    x bigint := ('x' || encode(substr(sha256(convert_to(p_session, 'UTF8')), 1, 8), 'hex'))
                ::bit(64)::bigint;
BEGIN
    IF p_buckets < 1 THEN
        RAISE EXCEPTION 'pgsessions: buckets must be >= 1, got %', p_buckets
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- x as unsigned: its low 63 bits, plus 2^63 when the sign bit is set
    RETURN (((x & 9223372036854775807) % p_buckets
             + CASE WHEN x < 0 THEN (9223372036854775807 % p_buckets + 1) % p_buckets
                    ELSE 0 END) % p_buckets)::integer;
END
$$;

CREATE FUNCTION {schema}.clear_session(p_session text) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    PERFORM 1 FROM {schema}.conversations WHERE session_id = p_session FOR UPDATE;
    PERFORM {schema}.keep_add_ops(p_session);
    DELETE FROM {schema}.conversations WHERE session_id = p_session;
END
$$;

CREATE FUNCTION {schema}.clear_session(p_session text, p_op uuid) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
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

CREATE FUNCTION {schema}.collect_branches(p_session text) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    v_rows bigint;
    v_user bigint;
BEGIN
    WITH keep AS (
        SELECT s.anc, max(s.upto) AS upto
          FROM {schema}.branches b CROSS JOIN LATERAL unnest(b.anc, b.upto) AS s(anc, upto)
         WHERE b.session_id = p_session AND b.deleted_at IS NULL
         GROUP BY s.anc
    ), gone AS (
        DELETE FROM {schema}.messages m
         USING {schema}.branches d
         WHERE d.session_id = p_session AND d.deleted_at IS NOT NULL
           AND m.session_id = p_session AND m.branch_id = d.branch_id
           AND m.seq > coalesce((SELECT k.upto FROM keep k WHERE k.anc = d.branch_id), 0)
        RETURNING m.op, m.role
    ), kept AS (
        INSERT INTO {schema}.ops (session_id, op_id)
        SELECT p_session, gone.op FROM gone WHERE gone.op IS NOT NULL
        ON CONFLICT DO NOTHING
    )
    SELECT count(*), count(*) FILTER (WHERE gone.role = 'user') INTO v_rows, v_user FROM gone;
    IF v_rows > 0 THEN
        UPDATE {schema}.conversations
           SET item_count = item_count - v_rows, user_turns = user_turns - v_user
         WHERE session_id = p_session;
    END IF;
    RETURN v_rows;
END
$$;

CREATE FUNCTION {schema}.conversation_gone() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    DELETE FROM {schema}.messages
     WHERE session_id = OLD.session_id AND bucket = OLD.bucket;
    UPDATE {schema}.branches SET deleted_at = now()
     WHERE session_id = OLD.session_id AND deleted_at IS NULL;
    RETURN NULL;
END
$$;

CREATE FUNCTION {schema}.create_branch(p_session text, p_op uuid, p_name text, p_turn integer, p_base text) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    v_src    text;
    v_seq    bigint;
    v_name   text;
    v_anc    text[] := '{}';
    v_upto   bigint[] := '{}';
    v_suffix integer := 1;
BEGIN
    INSERT INTO {schema}.ops (session_id, op_id) VALUES (p_session, p_op)
        ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN (SELECT o.result #>> '{}' FROM {schema}.ops o
                 WHERE o.session_id = p_session AND o.op_id = p_op);
    END IF;
    SELECT c.current_branch INTO v_src FROM {schema}.conversations c
     WHERE c.session_id = p_session FOR UPDATE;
    IF FOUND AND p_turn >= 1 THEN
        SELECT t.seq INTO v_seq
          FROM (SELECT b.seq FROM {schema}.branch_items(p_session, v_src, NULL) b
                 WHERE b.role = 'user' ORDER BY b.seq OFFSET p_turn - 1 LIMIT 1) t;
    END IF;
    IF v_seq IS NULL THEN
        PERFORM {schema}.branch_error(format(
            'Turn %s does not contain a user message in branch ''%s''',
            p_turn, coalesce(v_src, 'main')));
    END IF;
    IF p_name IS NOT NULL THEN
        IF p_name = 'main' OR EXISTS (SELECT 1 FROM {schema}.branches b
                                       WHERE b.session_id = p_session AND b.branch_id = p_name)
        THEN
            PERFORM {schema}.branch_error(format(
                'Branch ID ''%s'' has already been used. Choose a new branch ID.', p_name));
        END IF;
        v_name := p_name;
    ELSE
        v_name := p_base;
        WHILE v_name = 'main' OR EXISTS (SELECT 1 FROM {schema}.branches b
                                          WHERE b.session_id = p_session
                                            AND b.branch_id = v_name) LOOP
            v_suffix := v_suffix + 1;
            v_name := p_base || '_' || v_suffix;
        END LOOP;
    END IF;
    SELECT b.anc, b.upto INTO v_anc, v_upto FROM {schema}.branches b
     WHERE b.session_id = p_session AND b.branch_id = v_src;
    INSERT INTO {schema}.branches (session_id, branch_id, parent_id, from_turn, anc, upto)
    VALUES (p_session, v_name, v_src, p_turn,
            ARRAY[v_src] || coalesce(v_anc, '{}'),
            ARRAY[v_seq - 1] || ARRAY(SELECT least(u.upto, v_seq - 1)
                                        FROM unnest(coalesce(v_upto, '{}'))
                                             WITH ORDINALITY AS u(upto, i)
                                       ORDER BY u.i));
    UPDATE {schema}.conversations SET current_branch = v_name, updated_at = now()
     WHERE session_id = p_session;
    UPDATE {schema}.ops SET result = to_json(v_name)
     WHERE session_id = p_session AND op_id = p_op;
    RETURN v_name;
END
$$;

CREATE FUNCTION {schema}.current_tenant() RETURNS text
    LANGUAGE plpgsql STABLE
    AS $$
DECLARE
    v_tenant text := nullif(pg_catalog.current_setting('pgsessions.tenant', true), '');
BEGIN
    IF v_tenant IS NULL THEN
        RAISE EXCEPTION 'pgsessions: no tenant set for this transaction (tenant isolation is on)'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Call SELECT pgsessions.set_tenant(''...'') (or set_config(''pgsessions.tenant'', ''...'', true)) in the same transaction first.';
    END IF;
    RETURN v_tenant;
END
$$;

CREATE FUNCTION {schema}.delete_branch(p_session text, p_op uuid, p_branch text, p_force boolean) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    v_current text;
BEGIN
    INSERT INTO {schema}.ops (session_id, op_id) VALUES (p_session, p_op)
        ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    SELECT c.current_branch INTO v_current FROM {schema}.conversations c
     WHERE c.session_id = p_session FOR UPDATE;
    IF NOT EXISTS (
        SELECT 1 FROM {schema}.branches b
         WHERE b.session_id = p_session AND b.branch_id = p_branch AND b.deleted_at IS NULL)
    THEN
        PERFORM {schema}.branch_error(format('Branch ''%s'' does not exist', p_branch));
    END IF;
    IF v_current = p_branch THEN
        IF NOT p_force THEN
            PERFORM {schema}.branch_error(format(
                'Cannot delete current branch ''%s''. Use force=True or switch branches first',
                p_branch));
        END IF;
        UPDATE {schema}.conversations SET current_branch = 'main' WHERE session_id = p_session;
    END IF;
    UPDATE {schema}.branches SET deleted_at = now()
     WHERE session_id = p_session AND branch_id = p_branch;
    DELETE FROM {schema}.usage_logs WHERE session_id = p_session AND branch_id = p_branch;
    PERFORM {schema}.collect_branches(p_session);
    UPDATE {schema}.conversations SET updated_at = now() WHERE session_id = p_session;
    RETURN true;
END
$$;

CREATE FUNCTION {schema}.fence(p_bucket integer, p_epoch bigint) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
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

CREATE FUNCTION {schema}.fenced(p_bucket integer, p_epoch bigint, p_session text) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    PERFORM {schema}.fence(p_bucket, p_epoch);
    RETURN p_session;
END
$$;

CREATE FUNCTION {schema}.fill_bucket() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    NEW.bucket := {schema}.bucket_of(NEW.session_id, {schema}.bucket_count());
    RETURN NEW;
END
$$;

CREATE FUNCTION {schema}.keep_add_ops(p_session text) RETURNS void
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    INSERT INTO {schema}.ops (session_id, op_id)
    SELECT m.session_id, m.op FROM {schema}.messages m
     WHERE m.session_id = p_session AND m.op IS NOT NULL
       AND m.created_at > now() - interval '1 hour'
    ON CONFLICT DO NOTHING
$$;

CREATE FUNCTION {schema}.op_applied(p_session text, p_op uuid) RETURNS boolean
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT EXISTS (SELECT 1 FROM {schema}.messages m
                    WHERE m.session_id = p_session AND m.op = p_op)
        OR EXISTS (SELECT 1 FROM {schema}.ops o
                    WHERE o.session_id = p_session AND o.op_id = p_op)
$$;

CREATE FUNCTION {schema}.owns(p_bucket integer, p_epoch bigint) RETURNS void
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
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

CREATE FUNCTION {schema}.pop_item(p_session text, p_op uuid) RETURNS json
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    v_item   json;
    v_role   text;
    v_add    uuid;
    v_seq    bigint;
    v_src    text;
    v_branch text;
    v_turns  integer;
    v_copies integer;
BEGIN
    INSERT INTO {schema}.ops (session_id, op_id) VALUES (p_session, p_op)
        ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        SELECT o.result INTO v_item FROM {schema}.ops o
         WHERE o.session_id = p_session AND o.op_id = p_op;
        RETURN v_item;
    END IF;
    SELECT c.current_branch INTO v_branch FROM {schema}.conversations c
     WHERE c.session_id = p_session FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT t.seq, t.item, t.role, t.src INTO v_seq, v_item, v_role, v_src
      FROM {schema}.branch_items(p_session, v_branch, 1) t;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF v_role = 'user' THEN
        v_turns := {schema}.branch_user_turns(p_session, v_branch);
    END IF;
    IF v_src = v_branch THEN
        INSERT INTO {schema}.messages
               (session_id, branch_id, seq, item, role, type, created_at, tenant)
        SELECT p_session, b.branch_id, m.seq, m.item, m.role, m.type, m.created_at, m.tenant
          FROM {schema}.branches b
          CROSS JOIN LATERAL unnest(b.anc, b.upto) AS s(anc, upto)
          JOIN {schema}.messages m
            ON m.session_id = p_session AND m.branch_id = v_branch AND m.seq = v_seq
         WHERE b.session_id = p_session AND b.deleted_at IS NULL
           AND s.anc = v_branch AND s.upto >= v_seq;
        GET DIAGNOSTICS v_copies = ROW_COUNT;
        IF v_copies > 0 THEN
            UPDATE {schema}.branches b
               SET upto = ARRAY(SELECT CASE WHEN s.anc = v_branch THEN least(s.upto, v_seq - 1)
                                            ELSE s.upto END
                                  FROM unnest(b.anc, b.upto) WITH ORDINALITY AS s(anc, upto, i)
                                 ORDER BY s.i)
             WHERE b.session_id = p_session AND v_branch = ANY (b.anc);
        END IF;
        DELETE FROM {schema}.messages m
         WHERE m.session_id = p_session AND m.branch_id = v_branch AND m.seq = v_seq
        RETURNING m.op INTO v_add;
        IF v_add IS NOT NULL THEN
            INSERT INTO {schema}.ops (session_id, op_id) VALUES (p_session, v_add)
                ON CONFLICT DO NOTHING;
        END IF;
        UPDATE {schema}.conversations
           SET item_count = item_count - 1 + v_copies,
               user_turns = user_turns
                   + CASE WHEN v_role = 'user' THEN v_copies - 1 ELSE 0 END,
               updated_at = now()
         WHERE session_id = p_session;
    ELSE
        UPDATE {schema}.branches b
           SET upto = ARRAY(SELECT least(s.upto, v_seq - 1)
                              FROM unnest(b.upto) WITH ORDINALITY AS s(upto, i) ORDER BY s.i)
         WHERE b.session_id = p_session AND b.branch_id = v_branch;
        UPDATE {schema}.conversations SET updated_at = now() WHERE session_id = p_session;
    END IF;
    IF v_role = 'user' THEN
        DELETE FROM {schema}.usage_logs
         WHERE session_id = p_session AND branch_id = v_branch AND user_turn_number >= v_turns;
    END IF;
    UPDATE {schema}.ops SET result = v_item WHERE session_id = p_session AND op_id = p_op;
    RETURN v_item;
END
$$;

CREATE FUNCTION {schema}.prune_ops(p_older_than interval DEFAULT '01:00:00'::interval, p_batch integer DEFAULT 1000) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    n integer;
BEGIN
    DELETE FROM {schema}.tenant_ops o
     USING (SELECT session_id, op_id, tenant FROM {schema}.tenant_ops
             WHERE created_at < now() - p_older_than
             ORDER BY created_at
             LIMIT p_batch
               FOR UPDATE SKIP LOCKED) old
     WHERE o.session_id = old.session_id AND o.op_id = old.op_id AND o.tenant = old.tenant;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

CREATE FUNCTION {schema}.replace_suffix(p_session text, p_op uuid, p_created timestamp with time zone, p_expected bigint[], p_prune_through bigint, p_items json[], p_roles text[], p_types text[]) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    n         integer := coalesce(cardinality(p_items), 0);
    v_created timestamptz;
    v_branch  text;
    v_current bigint[];
    v_own     boolean;
    v_low     bigint;
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
    SELECT c.created_at, c.current_branch INTO v_created, v_branch FROM {schema}.conversations c
     WHERE c.session_id = p_session FOR UPDATE;
    IF NOT FOUND OR v_created <> p_created OR coalesce(cardinality(p_expected), 0) = 0 THEN
        RETURN false;
    END IF;
    SELECT array_agg(t.seq ORDER BY t.seq), bool_and(t.src = v_branch) INTO v_current, v_own
      FROM {schema}.branch_items(p_session, v_branch, cardinality(p_expected)) t;
    IF v_current IS DISTINCT FROM p_expected OR NOT v_own THEN
        RETURN false;
    END IF;
    v_low := p_expected[1];
    IF p_prune_through IS NOT NULL THEN
        -- the prefix must be the branch's own too: a branch's oldest items are its parent's
        IF EXISTS (SELECT 1 FROM {schema}.branches b
                    WHERE b.session_id = p_session AND b.branch_id = v_branch) THEN
            RETURN false;
        END IF;
        v_low := 0;
    END IF;
    IF EXISTS (SELECT 1 FROM {schema}.branches b
                CROSS JOIN LATERAL unnest(b.anc, b.upto) AS s(anc, upto)
                WHERE b.session_id = p_session AND b.deleted_at IS NULL
                  AND s.anc = v_branch AND s.upto >= v_low) THEN
        RETURN false;
    END IF;
    IF p_prune_through IS NOT NULL THEN
        WITH gone AS (
            DELETE FROM {schema}.messages
             WHERE session_id = p_session AND branch_id = v_branch
               AND seq <= least(p_prune_through, p_expected[1] - 1)
            RETURNING op
        ), kept AS (
            INSERT INTO {schema}.ops (session_id, op_id)
            SELECT p_session, gone.op FROM gone WHERE gone.op IS NOT NULL
            ON CONFLICT DO NOTHING
        )
        SELECT count(*) INTO v_removed FROM gone;
    END IF;
    WITH gone AS (
        DELETE FROM {schema}.messages
         WHERE session_id = p_session AND branch_id = v_branch AND seq >= p_expected[1]
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
    INSERT INTO {schema}.messages (session_id, branch_id, seq, item, role, type)
    SELECT p_session, v_branch, first_seq + t.ord - 1, t.item, t.role, t.type
      FROM unnest(p_items, p_roles, p_types) WITH ORDINALITY AS t(item, role, type, ord);
    UPDATE {schema}.ops SET result = 'true'::json
     WHERE session_id = p_session AND op_id = p_op;
    RETURN true;
END
$$;

CREATE FUNCTION {schema}.set_tenant(p_tenant text) RETURNS text
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_forced integer;
    v_owner  text;
BEGIN
    IF p_tenant IS NULL OR p_tenant = '' THEN
        RAISE EXCEPTION 'pgsessions: a tenant must be a non-empty string'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT count(*) FILTER (WHERE c.relrowsecurity AND c.relforcerowsecurity),
           max(r.rolname) FILTER (WHERE r.rolsuper OR r.rolbypassrls)
      INTO v_forced, v_owner
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_roles r ON r.oid = c.relowner
     WHERE c.oid IN ('{schema}.conversations'::regclass, '{schema}.messages'::regclass,
                     '{schema}.usage_logs'::regclass, '{schema}.branches'::regclass);
    IF v_forced <> 4 THEN
        RAISE EXCEPTION 'pgsessions: tenant isolation is off in schema {schema}'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Run `pgsessions migrate --tenant-isolation on` as the schema owner.';
    END IF;
    IF v_owner IS NOT NULL THEN
        RAISE EXCEPTION 'pgsessions: the tables of schema {schema} belong to role %, which bypasses row-level security', v_owner
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Migrate as a plain owner role (not a superuser, not BYPASSRLS).';
    END IF;
    IF NOT pg_catalog.row_security_active('{schema}.conversations'::regclass) THEN
        RAISE EXCEPTION 'pgsessions: row-level security does not apply to role %', current_user
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Superusers and BYPASSRLS roles see every tenant: connect as a plain role.';
    END IF;
    PERFORM pg_catalog.set_config('pgsessions.tenant', p_tenant, true);
    RETURN p_tenant;
END
$$;

CREATE FUNCTION {schema}.shard_buckets_fenced() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
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

CREATE FUNCTION {schema}.shard_directory() RETURNS TABLE(name text, buckets integer, owned integer[], epochs bigint[])
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT i.name, i.buckets,
           coalesce(array_agg(b.bucket ORDER BY b.bucket) FILTER (WHERE b.bucket IS NOT NULL),
                    '{}'),
           coalesce(array_agg(b.epoch ORDER BY b.bucket) FILTER (WHERE b.bucket IS NOT NULL),
                    '{}')
      FROM {schema}.shard_identity i LEFT JOIN {schema}.shard_buckets b ON true
     GROUP BY i.name, i.buckets
$$;

CREATE FUNCTION {schema}.shard_identity_buckets() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    v_forced text[];
    v_table  text;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.buckets = OLD.buckets THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'INSERT' AND NEW.buckets = 1024 THEN
        RETURN NEW;
    END IF;
    SELECT array_agg(c.relname::text) INTO v_forced
      FROM pg_catalog.pg_class c
     WHERE c.relnamespace = '{schema}'::regnamespace AND c.relforcerowsecurity;
    FOREACH v_table IN ARRAY coalesce(v_forced, '{}') LOOP
        EXECUTE format('ALTER TABLE {schema}.%I NO FORCE ROW LEVEL SECURITY', v_table);
    END LOOP;
    UPDATE {schema}.conversations SET bucket = {schema}.bucket_of(session_id, NEW.buckets)
     WHERE bucket <> {schema}.bucket_of(session_id, NEW.buckets);
    UPDATE {schema}.messages m SET bucket = c.bucket
      FROM {schema}.conversations c
     WHERE c.session_id = m.session_id AND m.bucket <> c.bucket;
    UPDATE {schema}.branches SET bucket = {schema}.bucket_of(session_id, NEW.buckets)
     WHERE bucket <> {schema}.bucket_of(session_id, NEW.buckets);
    UPDATE {schema}.tenant_ops SET bucket = {schema}.bucket_of(session_id, NEW.buckets)
     WHERE bucket <> {schema}.bucket_of(session_id, NEW.buckets);
    FOREACH v_table IN ARRAY coalesce(v_forced, '{}') LOOP
        EXECUTE format('ALTER TABLE {schema}.%I FORCE ROW LEVEL SECURITY', v_table);
    END LOOP;
    RETURN NEW;
END
$$;

CREATE FUNCTION {schema}.store_usage(p_session text, p_op uuid, p_model text, p_requests integer, p_input_tokens bigint, p_output_tokens bigint, p_total_tokens bigint, p_input_details jsonb, p_output_details jsonb) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    v_turn   integer;
    v_branch text;
    v_bucket integer;
BEGIN
    INSERT INTO {schema}.ops (session_id, op_id) VALUES (p_session, p_op)
        ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        SELECT (o.result::text)::integer INTO v_turn FROM {schema}.ops o
         WHERE o.session_id = p_session AND o.op_id = p_op;
        RETURN v_turn;
    END IF;
    -- share lock: a concurrent pop or switch runs before or after
    SELECT c.current_branch, c.bucket INTO v_branch, v_bucket FROM {schema}.conversations c
     WHERE c.session_id = p_session FOR SHARE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    v_turn := {schema}.branch_user_turns(p_session, v_branch);
    IF v_turn = 0 THEN
        RETURN NULL;
    END IF;
    INSERT INTO {schema}.usage_logs AS u (session_id, bucket, branch_id, user_turn_number,
           model, requests, input_tokens, output_tokens, total_tokens, input_tokens_details,
           output_tokens_details)
    VALUES (p_session, v_bucket, v_branch, v_turn, p_model, p_requests, p_input_tokens,
            p_output_tokens, p_total_tokens, p_input_details, p_output_details)
    ON CONFLICT (session_id, branch_id, user_turn_number, bucket) DO UPDATE SET
           model = excluded.model, requests = excluded.requests,
           input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens,
           total_tokens = excluded.total_tokens,
           input_tokens_details = excluded.input_tokens_details,
           output_tokens_details = excluded.output_tokens_details, created_at = now();
    UPDATE {schema}.ops SET result = to_json(v_turn)
     WHERE session_id = p_session AND op_id = p_op;
    RETURN v_turn;
END
$$;

CREATE FUNCTION {schema}.switch_branch(p_session text, p_op uuid, p_branch text) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    INSERT INTO {schema}.ops (session_id, op_id) VALUES (p_session, p_op)
        ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM 1 FROM {schema}.conversations WHERE session_id = p_session FOR UPDATE;
    IF p_branch <> 'main' AND NOT EXISTS (
        SELECT 1 FROM {schema}.branches b
         WHERE b.session_id = p_session AND b.branch_id = p_branch AND b.deleted_at IS NULL)
    THEN
        PERFORM {schema}.branch_error(format('Branch ''%s'' does not exist', p_branch));
    END IF;
    UPDATE {schema}.conversations SET current_branch = p_branch, updated_at = now()
     WHERE session_id = p_session;
    RETURN true;
END
$$;

CREATE FUNCTION {schema}.update_metadata(p_session text, p_op uuid, p_metadata jsonb, p_replace boolean) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    v_metadata jsonb;
BEGIN
    INSERT INTO {schema}.ops (session_id, op_id) VALUES (p_session, p_op)
        ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        SELECT o.result::jsonb INTO v_metadata FROM {schema}.ops o
         WHERE o.session_id = p_session AND o.op_id = p_op;
        RETURN v_metadata;
    END IF;
    INSERT INTO {schema}.conversations AS c (session_id, metadata)
    VALUES (p_session, p_metadata)
    ON CONFLICT (session_id, bucket) DO UPDATE SET
           metadata = CASE WHEN p_replace THEN excluded.metadata
                           ELSE c.metadata || excluded.metadata END,
           updated_at = now()
    RETURNING c.metadata INTO v_metadata;
    UPDATE {schema}.ops SET result = v_metadata::json
     WHERE session_id = p_session AND op_id = p_op;
    RETURN v_metadata;
END
$$;

CREATE FUNCTION {schema}.wait_replay(p_lsn pg_lsn, p_seconds double precision, p_spin double precision DEFAULT 0) RETURNS text
    LANGUAGE plpgsql PARALLEL SAFE
    AS $$
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

CREATE TABLE {schema}.branches (
    session_id text NOT NULL,
    branch_id text NOT NULL,
    tenant text DEFAULT COALESCE(current_setting('pgsessions.tenant'::text, true), ''::text) NOT NULL,
    parent_id text NOT NULL,
    from_turn integer NOT NULL,
    anc text[] NOT NULL,
    upto bigint[] NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    deleted_at timestamp with time zone,
    bucket integer NOT NULL
);

CREATE TABLE {schema}.conversations (
    session_id text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    metadata jsonb DEFAULT '{}'::jsonb NOT NULL,
    next_seq bigint DEFAULT 1 NOT NULL,
    item_count bigint DEFAULT 0 NOT NULL,
    user_turns integer DEFAULT 0 NOT NULL,
    tenant text DEFAULT COALESCE(current_setting('pgsessions.tenant'::text, true), ''::text) NOT NULL,
    active_at timestamp with time zone GENERATED ALWAYS AS (date_bin('00:01:00'::interval, updated_at, '2000-01-01 00:00:00+00'::timestamp with time zone)) STORED,
    current_branch text DEFAULT 'main'::text NOT NULL,
    bucket integer NOT NULL
)
WITH (fillfactor='70');

CREATE TABLE {schema}.messages (
    session_id text NOT NULL,
    seq bigint NOT NULL,
    item json NOT NULL,
    role text,
    type text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    tenant text DEFAULT COALESCE(current_setting('pgsessions.tenant'::text, true), ''::text) NOT NULL,
    op uuid,
    branch_id text DEFAULT 'main'::text NOT NULL,
    bucket integer NOT NULL
);

CREATE TABLE {schema}.tenant_ops (
    session_id text NOT NULL,
    op_id uuid NOT NULL,
    result json,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    tenant text DEFAULT COALESCE(current_setting('pgsessions.tenant'::text, true), ''::text) NOT NULL,
    bucket integer NOT NULL
);

CREATE VIEW {schema}.ops AS
 SELECT o.session_id,
    o.op_id,
    o.result,
    o.created_at
   FROM {schema}.tenant_ops o
  WHERE (o.tenant = COALESCE(current_setting('pgsessions.tenant'::text, true), ''::text));

CREATE TABLE {schema}.schema_migrations (
    version text NOT NULL,
    name text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE {schema}.shard_buckets (
    bucket integer NOT NULL,
    epoch bigint NOT NULL,
    owned_since timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT shard_buckets_bucket_check CHECK ((bucket >= 0)),
    CONSTRAINT shard_buckets_epoch_check CHECK ((epoch > 0))
);

CREATE TABLE {schema}.shard_identity (
    singleton boolean DEFAULT true NOT NULL,
    name text NOT NULL,
    buckets integer NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT shard_identity_buckets_check CHECK ((buckets > 0)),
    CONSTRAINT shard_identity_name_check CHECK ((name <> ''::text)),
    CONSTRAINT shard_identity_singleton_check CHECK (singleton)
);

CREATE TABLE {schema}.shard_moves (
    id text NOT NULL,
    source text NOT NULL,
    target text NOT NULL,
    buckets integer[] NOT NULL,
    epochs bigint[] NOT NULL,
    phase text NOT NULL,
    rows_moved bigint,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    finished_at timestamp with time zone,
    CONSTRAINT shard_moves_buckets_check CHECK ((cardinality(buckets) > 0)),
    CONSTRAINT shard_moves_check CHECK ((target <> source)),
    CONSTRAINT shard_moves_check1 CHECK ((cardinality(epochs) = cardinality(buckets))),
    CONSTRAINT shard_moves_id_check CHECK ((id ~ '^[a-z0-9_]{1,40}$'::text)),
    CONSTRAINT shard_moves_phase_check CHECK ((phase = ANY (ARRAY['copying'::text, 'fenced'::text, 'flipped'::text, 'done'::text, 'aborted'::text])))
);

CREATE TABLE {schema}.usage_logs (
    session_id text NOT NULL,
    user_turn_number integer NOT NULL,
    model text,
    requests integer DEFAULT 0 NOT NULL,
    input_tokens bigint DEFAULT 0 NOT NULL,
    output_tokens bigint DEFAULT 0 NOT NULL,
    total_tokens bigint DEFAULT 0 NOT NULL,
    input_tokens_details jsonb,
    output_tokens_details jsonb,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    tenant text DEFAULT COALESCE(current_setting('pgsessions.tenant'::text, true), ''::text) NOT NULL,
    branch_id text DEFAULT 'main'::text NOT NULL,
    bucket integer NOT NULL
);

ALTER TABLE ONLY {schema}.branches
    ADD CONSTRAINT branches_pkey PRIMARY KEY (session_id, branch_id, bucket);

ALTER TABLE ONLY {schema}.conversations
    ADD CONSTRAINT conversations_pkey PRIMARY KEY (session_id, bucket);

ALTER TABLE ONLY {schema}.messages
    ADD CONSTRAINT messages_pkey PRIMARY KEY (session_id, branch_id, seq, bucket);

ALTER TABLE ONLY {schema}.schema_migrations
    ADD CONSTRAINT schema_migrations_pkey PRIMARY KEY (version);

ALTER TABLE ONLY {schema}.shard_buckets
    ADD CONSTRAINT shard_buckets_pkey PRIMARY KEY (bucket);

ALTER TABLE ONLY {schema}.shard_identity
    ADD CONSTRAINT shard_identity_pkey PRIMARY KEY (singleton);

ALTER TABLE ONLY {schema}.shard_moves
    ADD CONSTRAINT shard_moves_pkey PRIMARY KEY (id);

ALTER TABLE ONLY {schema}.tenant_ops
    ADD CONSTRAINT tenant_ops_pkey PRIMARY KEY (session_id, op_id, tenant, bucket);

ALTER TABLE ONLY {schema}.usage_logs
    ADD CONSTRAINT usage_logs_pkey PRIMARY KEY (session_id, branch_id, user_turn_number, bucket);

CREATE INDEX conversations_active_idx ON {schema}.conversations USING btree (active_at);

CREATE INDEX conversations_bucket_idx ON {schema}.conversations USING btree (bucket, session_id);

CREATE INDEX conversations_metadata_idx ON {schema}.conversations USING gin (metadata jsonb_path_ops);

CREATE INDEX conversations_tenant_active_idx ON {schema}.conversations USING btree (tenant, active_at);

CREATE UNIQUE INDEX messages_op_key ON {schema}.messages USING btree (op) WHERE (op IS NOT NULL);

CREATE INDEX ops_created_idx ON {schema}.tenant_ops USING btree (created_at);

CREATE UNIQUE INDEX shard_moves_one_at_a_time ON {schema}.shard_moves USING btree ((true)) WHERE (phase <> ALL (ARRAY['done'::text, 'aborted'::text]));

CREATE INDEX usage_logs_created_idx ON {schema}.usage_logs USING btree (created_at);

CREATE TRIGGER conversation_gone AFTER DELETE ON {schema}.conversations FOR EACH ROW EXECUTE FUNCTION {schema}.conversation_gone();

CREATE TRIGGER fill_bucket BEFORE INSERT ON {schema}.branches FOR EACH ROW WHEN ((new.bucket IS NULL)) EXECUTE FUNCTION {schema}.fill_bucket();

CREATE TRIGGER fill_bucket BEFORE INSERT ON {schema}.conversations FOR EACH ROW WHEN ((new.bucket IS NULL)) EXECUTE FUNCTION {schema}.fill_bucket();

CREATE TRIGGER fill_bucket BEFORE INSERT ON {schema}.messages FOR EACH ROW WHEN ((new.bucket IS NULL)) EXECUTE FUNCTION {schema}.fill_bucket();

CREATE TRIGGER fill_bucket BEFORE INSERT ON {schema}.tenant_ops FOR EACH ROW WHEN ((new.bucket IS NULL)) EXECUTE FUNCTION {schema}.fill_bucket();

CREATE TRIGGER fill_bucket BEFORE INSERT ON {schema}.usage_logs FOR EACH ROW WHEN ((new.bucket IS NULL)) EXECUTE FUNCTION {schema}.fill_bucket();

CREATE TRIGGER shard_buckets_fenced BEFORE INSERT OR DELETE OR UPDATE ON {schema}.shard_buckets FOR EACH ROW EXECUTE FUNCTION {schema}.shard_buckets_fenced();

CREATE TRIGGER shard_identity_buckets AFTER INSERT OR UPDATE OF buckets ON {schema}.shard_identity FOR EACH ROW EXECUTE FUNCTION {schema}.shard_identity_buckets();

ALTER TABLE ONLY {schema}.usage_logs
    ADD CONSTRAINT usage_logs_session_id_fkey FOREIGN KEY (session_id, bucket) REFERENCES {schema}.conversations(session_id, bucket) ON UPDATE CASCADE ON DELETE CASCADE;

CREATE POLICY tenant_isolation ON {schema}.branches USING ((tenant = ( SELECT {schema}.current_tenant() AS current_tenant))) WITH CHECK ((tenant = ( SELECT {schema}.current_tenant() AS current_tenant)));

CREATE POLICY tenant_isolation ON {schema}.conversations USING ((tenant = ( SELECT {schema}.current_tenant() AS current_tenant))) WITH CHECK ((tenant = ( SELECT {schema}.current_tenant() AS current_tenant)));

CREATE POLICY tenant_isolation ON {schema}.messages USING ((tenant = ( SELECT {schema}.current_tenant() AS current_tenant))) WITH CHECK ((tenant = ( SELECT {schema}.current_tenant() AS current_tenant)));

CREATE POLICY tenant_isolation ON {schema}.usage_logs USING ((tenant = ( SELECT {schema}.current_tenant() AS current_tenant))) WITH CHECK ((tenant = ( SELECT {schema}.current_tenant() AS current_tenant)));
