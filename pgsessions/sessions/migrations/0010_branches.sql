-- pgsessions 0010: conversation branches (issue 28), the AdvancedSQLiteSession model on
-- PostgreSQL and across servers.
-- * Every message and usage row belongs to a branch; the rows that exist become branch 'main'
--   (constant defaults: no table rewrite). The primary keys gain the branch, so a branch's
--   items are one range of the key, like a conversation's were: no index is added to messages.
-- * The conversation row keeps its current branch: the server that serves the next turn
--   continues on the branch another server switched to.
-- * A branch shares its prefix with the branch it came from instead of copying it: its view is
--   its own rows plus, for each ancestor anc[i], that ancestor's rows with seq <= upto[i]. A
--   shared row is never changed by a branch; popping one either lowers that branch's bound or,
--   when the row is the popping branch's own and others still share it, copies it to them first.
-- * branches keeps a row per branch ever created; deleting a branch (or clearing the
--   conversation) leaves a tombstone, so an id is never used twice in a conversation.
-- Every write below runs under the conversation row's lock and takes an operation id.

ALTER TABLE {schema}.conversations ADD COLUMN current_branch text NOT NULL DEFAULT 'main';
ALTER TABLE {schema}.messages ADD COLUMN branch_id text NOT NULL DEFAULT 'main';
ALTER TABLE {schema}.usage_logs ADD COLUMN branch_id text NOT NULL DEFAULT 'main';

ALTER TABLE {schema}.messages DROP CONSTRAINT messages_pkey,
    ADD PRIMARY KEY (session_id, branch_id, seq);
ALTER TABLE {schema}.usage_logs DROP CONSTRAINT usage_logs_pkey,
    ADD PRIMARY KEY (session_id, branch_id, user_turn_number);

CREATE TABLE {schema}.branches (
    session_id  text        NOT NULL,
    branch_id   text        NOT NULL,
    tenant      text        NOT NULL
                DEFAULT coalesce(pg_catalog.current_setting('pgsessions.tenant', true), ''),
    parent_id   text        NOT NULL,
    from_turn   integer     NOT NULL,
    -- the shared prefix: rows of branch anc[i] with seq <= upto[i] (nearest ancestor first)
    anc         text[]      NOT NULL,
    upto        bigint[]    NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- set when the branch is deleted or its conversation cleared: the id stays taken
    deleted_at  timestamptz,
    PRIMARY KEY (session_id, branch_id)
);

CREATE POLICY tenant_isolation ON {schema}.branches
    USING (tenant = (SELECT {schema}.current_tenant()))
    WITH CHECK (tenant = (SELECT {schema}.current_tenant()));
-- isolation already on (enabled on conversations; migrate unforces the tables only while a
-- migration runs): the new table gets it too
DO $$
BEGIN
    IF (SELECT c.relrowsecurity FROM pg_catalog.pg_class c
         WHERE c.oid = '{schema}.conversations'::regclass) THEN
        ALTER TABLE {schema}.branches ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
    END IF;
END
$$;

-- However a conversation goes (clear_session, prune, an import that replaces it), its branches
-- become tombstones with it: a conversation written again under the same id starts its seqs
-- anew and must not find old branches sharing them.
CREATE FUNCTION {schema}.conversation_gone() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE {schema}.branches SET deleted_at = now()
     WHERE session_id = OLD.session_id AND deleted_at IS NULL;
    RETURN NULL;
END
$$;
CREATE TRIGGER conversation_gone AFTER DELETE ON {schema}.conversations
    FOR EACH ROW EXECUTE FUNCTION {schema}.conversation_gone();

-- The branch a call acts on: p_branch, or the conversation's current one ('main' without one).
CREATE FUNCTION {schema}.branch_of(p_session text, p_branch text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT coalesce(p_branch,
                    (SELECT c.current_branch FROM {schema}.conversations c
                      WHERE c.session_id = p_session),
                    'main')
$$;

-- The latest p_limit items of a branch's view (NULL: all), newest first, each with the branch
-- that stores it (src); p_branch NULL: the current branch. Runs as the caller (reads obey
-- row-level security). A deleted branch has no view. The branch and its row are looked up
-- once (cur), then each segment is one backward range scan of the primary key.
CREATE FUNCTION {schema}.branch_items(p_session text, p_branch text, p_limit bigint)
RETURNS TABLE (seq bigint, item json, role text, type text, created_at timestamptz, src text)
LANGUAGE sql STABLE AS $$
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

-- The current user turn of a branch: the number of user items in its view. A conversation
-- without live branches keeps all its rows on main: its counter (user_turns, kept across a
-- compaction as before 0010) answers without reading the history.
CREATE FUNCTION {schema}.branch_user_turns(p_session text, p_branch text) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN p_branch = 'main' AND NOT EXISTS (
            SELECT 1 FROM {schema}.branches b
             WHERE b.session_id = p_session AND b.deleted_at IS NULL)
        THEN (SELECT c.user_turns FROM {schema}.conversations c WHERE c.session_id = p_session)
        ELSE (SELECT count(*)::integer FROM {schema}.branch_items(p_session, p_branch, NULL) t
               WHERE t.role = 'user')
    END
$$;

-- Errors the session turns into ValueError (the SDK's messages): SQLSTATE 22023 with this
-- detail, never retried by the router (a data error).
CREATE FUNCTION {schema}.branch_error(p_message text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%', p_message
        USING ERRCODE = 'invalid_parameter_value', DETAIL = 'pgsessions:branch';
END
$$;

-- add_items_checked as in 0007; the batch goes to the conversation's current branch.
CREATE OR REPLACE FUNCTION {schema}.add_items_checked(
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
    v_branch  text;
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
        RETURN false;
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
    RETURNING c.next_seq - n, c.current_branch INTO first_seq, v_branch;
    INSERT INTO {schema}.messages (session_id, branch_id, seq, item, role, type, op)
    SELECT p_session, v_branch, first_seq + t.ord - 1, t.item, t.role, t.type,
           CASE WHEN t.ord = 1 THEN p_op END
      FROM unnest(p_items, p_roles, p_types) WITH ORDINALITY AS t(item, role, type, ord);
    RETURN true;
END
$$;

-- Delete the rows of deleted branches that no live branch shares any more (their add
-- operation ids move to ops); returns the number of rows deleted.
CREATE FUNCTION {schema}.collect_branches(p_session text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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

-- Remove and return the newest item of the current branch (NULL when none). A replay of p_op
-- returns what the original removed. A row the branch shares from an ancestor stays (the
-- branch stops sharing it); a row of its own that other branches share is copied to them
-- first. Popping a user item removes the branch's usage rows of that turn and later ones.
CREATE OR REPLACE FUNCTION {schema}.pop_item(p_session text, p_op uuid) RETURNS json
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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

-- store_usage as in 0004, for the current branch's current user turn.
CREATE OR REPLACE FUNCTION {schema}.store_usage(
    p_session        text,
    p_op             uuid,
    p_model          text,
    p_requests       integer,
    p_input_tokens   bigint,
    p_output_tokens  bigint,
    p_total_tokens   bigint,
    p_input_details  jsonb,
    p_output_details jsonb
) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_turn   integer;
    v_branch text;
BEGIN
    INSERT INTO {schema}.ops (session_id, op_id) VALUES (p_session, p_op)
        ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        SELECT (o.result::text)::integer INTO v_turn FROM {schema}.ops o
         WHERE o.session_id = p_session AND o.op_id = p_op;
        RETURN v_turn;
    END IF;
    -- share lock: a concurrent pop or switch runs before or after
    SELECT c.current_branch INTO v_branch FROM {schema}.conversations c
     WHERE c.session_id = p_session FOR SHARE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    v_turn := {schema}.branch_user_turns(p_session, v_branch);
    IF v_turn = 0 THEN
        RETURN NULL;
    END IF;
    INSERT INTO {schema}.usage_logs AS u (session_id, branch_id, user_turn_number, model,
           requests, input_tokens, output_tokens, total_tokens, input_tokens_details,
           output_tokens_details)
    VALUES (p_session, v_branch, v_turn, p_model, p_requests, p_input_tokens, p_output_tokens,
            p_total_tokens, p_input_details, p_output_details)
    ON CONFLICT (session_id, branch_id, user_turn_number) DO UPDATE SET
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

-- Create a branch from user turn p_turn of the current branch (the items before that turn's
-- user item are its shared prefix) and make it current; returns its id. p_name NULL: p_base,
-- or p_base_N with the first free N >= 2. A replay returns the original's id.
CREATE FUNCTION {schema}.create_branch(
    p_session text, p_op uuid, p_name text, p_turn integer, p_base text
) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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

-- Make p_branch the conversation's current branch ('main' always exists).
CREATE FUNCTION {schema}.switch_branch(p_session text, p_op uuid, p_branch text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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

-- Delete a branch: its usage rows, its own items no other branch shares, and a tombstone
-- keeps its id taken. The current branch only with p_force (the conversation then continues
-- on 'main').
CREATE FUNCTION {schema}.delete_branch(
    p_session text, p_op uuid, p_branch text, p_force boolean
) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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

-- Compaction on the current branch: as in 0007, when the items it deletes (the suffix, and
-- a pruned prefix) are the branch's own rows and no live branch shares them; otherwise it
-- refuses (false) and the SDK keeps the history as it is.
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

-- set_tenant as in 0006, with branches among the tables that must be forced.
CREATE OR REPLACE FUNCTION {schema}.set_tenant(p_tenant text) RETURNS text
LANGUAGE plpgsql AS $$
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

-- New routines and the new table: for the owner and the roles that may already run sessions.
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
        EXECUTE 'GRANT SELECT ON {schema}.branches TO ' || r.grantee;
        EXECUTE 'GRANT EXECUTE ON FUNCTION {schema}.branch_of(text, text), '
             || '{schema}.branch_items(text, text, bigint), '
             || '{schema}.branch_user_turns(text, text), {schema}.branch_error(text), '
             || '{schema}.collect_branches(text), '
             || '{schema}.create_branch(text, uuid, text, integer, text), '
             || '{schema}.switch_branch(text, uuid, text), '
             || '{schema}.delete_branch(text, uuid, text, boolean) TO ' || r.grantee;
    END LOOP;
END
$$;
