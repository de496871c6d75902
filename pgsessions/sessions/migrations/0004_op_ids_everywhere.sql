-- pgsessions 0004: every write carries an operation id (clear_session, store_run_usage,
-- update_metadata, compaction); a turn's usage row goes when its last item is popped; an
-- atomic suffix replacement for the Agents SDK's compaction.
-- The one-argument clear_session of 0001/0002 stays for servers still on the old version.

-- pop_item records its operation id first, even when there is nothing to pop: a replay after
-- another server added an item must not pop that item. Popping the user item that opened the
-- current turn removes that turn's usage row, so a reused turn number starts without usage.
CREATE OR REPLACE FUNCTION {schema}.pop_item(p_session text, p_op uuid) RETURNS json
LANGUAGE plpgsql AS $$
DECLARE
    v_item  json;
    v_role  text;
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
    RETURNING m.item, m.role INTO v_item, v_role;
    IF NOT FOUND THEN
        RETURN NULL;
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

-- Usage rows left by pops made before this version: turns that no longer have items.
DELETE FROM {schema}.usage_logs u
 USING {schema}.conversations c
 WHERE u.session_id = c.session_id AND u.user_turn_number > c.user_turns;

-- Delete the conversation (items and usage rows cascade) unless p_op was applied already:
-- a replay must not remove what another server added after the original clear.
CREATE FUNCTION {schema}.clear_session(p_session text, p_op uuid) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {schema}.ops (session_id, op_id) VALUES (p_session, p_op)
        ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    DELETE FROM {schema}.conversations WHERE session_id = p_session;
    RETURN true;
END
$$;

-- Store a run's usage for the current user turn (the number of user items); returns that
-- turn, or NULL when the session has no user item. A replay returns the original's turn and
-- writes nothing, so a retry after a new user item does not attach the usage to that turn.
CREATE FUNCTION {schema}.store_usage(
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
LANGUAGE plpgsql AS $$
DECLARE
    v_turn integer;
BEGIN
    INSERT INTO {schema}.ops (session_id, op_id) VALUES (p_session, p_op)
        ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        SELECT (o.result::text)::integer INTO v_turn FROM {schema}.ops o
         WHERE o.session_id = p_session AND o.op_id = p_op;
        RETURN v_turn;
    END IF;
    -- share lock: a concurrent pop (which deletes the turn's usage) runs before or after
    SELECT c.user_turns INTO v_turn FROM {schema}.conversations c
     WHERE c.session_id = p_session FOR SHARE;
    IF NOT FOUND OR v_turn = 0 THEN
        RETURN NULL;
    END IF;
    INSERT INTO {schema}.usage_logs AS u (session_id, user_turn_number, model, requests,
           input_tokens, output_tokens, total_tokens, input_tokens_details,
           output_tokens_details)
    VALUES (p_session, v_turn, p_model, p_requests, p_input_tokens, p_output_tokens,
            p_total_tokens, p_input_details, p_output_details)
    ON CONFLICT (session_id, user_turn_number) DO UPDATE SET
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

-- Merge (or replace) the conversation's metadata, creating it if needed; returns the new
-- metadata. A replay returns what the original returned and changes nothing, so it cannot
-- overwrite a change another server made in between.
CREATE FUNCTION {schema}.update_metadata(
    p_session text, p_op uuid, p_metadata jsonb, p_replace boolean
) RETURNS jsonb
LANGUAGE plpgsql AS $$
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
    ON CONFLICT (session_id) DO UPDATE SET
           metadata = CASE WHEN p_replace THEN excluded.metadata
                           ELSE c.metadata || excluded.metadata END,
           updated_at = now()
    RETURNING c.metadata INTO v_metadata;
    UPDATE {schema}.ops SET result = v_metadata::json
     WHERE session_id = p_session AND op_id = p_op;
    RETURN v_metadata;
END
$$;

-- Compaction: replace the newest items, whose seqs must be exactly p_expected (the suffix a
-- snapshot read), with p_items, and first delete the items up to p_prune_through (an expired
-- prefix the caller checked). Returns false and changes nothing when the conversation is not
-- the one the snapshot read (p_created), or its newest items are not p_expected any more (an
-- item was added, popped or replaced since): a concurrent write is never lost or reordered.
-- The turn counter is kept: a summary does not undo the turns it summarises.
CREATE FUNCTION {schema}.replace_suffix(
    p_session        text,
    p_op             uuid,
    p_created        timestamptz,
    p_expected       bigint[],
    p_prune_through  bigint,
    p_items          json[],
    p_roles          text[],
    p_types          text[]
) RETURNS boolean
LANGUAGE plpgsql AS $$
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
        DELETE FROM {schema}.messages
         WHERE session_id = p_session AND seq <= least(p_prune_through, p_expected[1] - 1);
        GET DIAGNOSTICS v_removed = ROW_COUNT;
    END IF;
    DELETE FROM {schema}.messages WHERE session_id = p_session AND seq >= p_expected[1];
    GET DIAGNOSTICS v_count = ROW_COUNT;
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
