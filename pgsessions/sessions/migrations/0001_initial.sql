-- pgsessions 0001: conversations, messages, usage logs, idempotent write functions.
-- {schema} is replaced by the quoted schema name; everything below is schema-qualified.

CREATE TABLE {schema}.conversations (
    session_id  text        PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    metadata    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    -- seq of the next item; assigned under this row's lock, never from a clock
    next_seq    bigint      NOT NULL DEFAULT 1,
    item_count  bigint      NOT NULL DEFAULT 0,
    -- items with role 'user' currently stored: the current user turn number
    user_turns  integer     NOT NULL DEFAULT 0
);
-- list_sessions: keyset pages by most recent update
CREATE INDEX conversations_updated_idx
    ON {schema}.conversations (updated_at DESC, session_id DESC);
-- list_sessions(metadata=...): containment
CREATE INDEX conversations_metadata_idx
    ON {schema}.conversations USING gin (metadata jsonb_path_ops);

CREATE TABLE {schema}.messages (
    session_id  text        NOT NULL REFERENCES {schema}.conversations ON DELETE CASCADE,
    seq         bigint      NOT NULL,
    -- json, not jsonb: keeps the exact text (\u0000, large numbers, key order)
    item        json        NOT NULL,
    role        text,
    type        text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- "latest N of one session" is a backward scan of this index
    PRIMARY KEY (session_id, seq)
);

CREATE TABLE {schema}.usage_logs (
    session_id             text        NOT NULL
                           REFERENCES {schema}.conversations ON DELETE CASCADE,
    user_turn_number       integer     NOT NULL,
    model                  text,
    requests               integer     NOT NULL DEFAULT 0,
    input_tokens           bigint      NOT NULL DEFAULT 0,
    output_tokens          bigint      NOT NULL DEFAULT 0,
    total_tokens           bigint      NOT NULL DEFAULT 0,
    input_tokens_details   jsonb,
    output_tokens_details  jsonb,
    created_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, user_turn_number)
);

-- Client operation ids: a write replayed after an ambiguous failure is applied once.
CREATE TABLE {schema}.ops (
    session_id  text        NOT NULL,
    op_id       uuid        NOT NULL,
    result      json,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, op_id)
);
CREATE INDEX ops_created_idx ON {schema}.ops (created_at);

-- Delete up to p_batch operation ids older than p_older_than (skipping locked rows).
CREATE FUNCTION {schema}.prune_ops(
    p_older_than interval DEFAULT interval '1 hour',
    p_batch integer DEFAULT 1000
) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    DELETE FROM {schema}.ops o
     USING (SELECT session_id, op_id FROM {schema}.ops
             WHERE created_at < now() - p_older_than
             ORDER BY created_at
             LIMIT p_batch
               FOR UPDATE SKIP LOCKED) old
     WHERE o.session_id = old.session_id AND o.op_id = old.op_id;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- Append one batch. Returns true when applied, false when p_op was already applied
-- (a replay waits for the original's outcome on the ops key, then sees it).
CREATE FUNCTION {schema}.add_items(
    p_session  text,
    p_op       uuid,
    p_items    json[],
    p_roles    text[],
    p_types    text[],
    p_metadata jsonb
) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    n         integer := coalesce(cardinality(p_items), 0);
    n_user    integer;
    first_seq bigint;
BEGIN
    INSERT INTO {schema}.ops (session_id, op_id) VALUES (p_session, p_op)
        ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF n = 0 THEN
        RETURN true;
    END IF;
    SELECT count(*) INTO n_user FROM unnest(p_roles) AS r(role) WHERE r.role = 'user';
    INSERT INTO {schema}.conversations AS c
           (session_id, metadata, next_seq, item_count, user_turns)
    VALUES (p_session, coalesce(p_metadata, '{}'::jsonb), 1 + n, n, n_user)
    ON CONFLICT (session_id) DO UPDATE
       SET next_seq   = c.next_seq + n,
           item_count = c.item_count + n,
           user_turns = c.user_turns + n_user,
           updated_at = now()
    RETURNING c.next_seq - n INTO first_seq;
    INSERT INTO {schema}.messages (session_id, seq, item, role, type)
    SELECT p_session, first_seq + t.ord - 1, t.item, t.role, t.type
      FROM unnest(p_items, p_roles, p_types) WITH ORDINALITY AS t(item, role, type, ord);
    IF random() < 0.01 THEN
        PERFORM {schema}.prune_ops();
    END IF;
    RETURN true;
END
$$;

-- Remove and return the newest item (NULL when none). A replay of p_op returns the item
-- the original removed. Callers are serialised by the conversation row lock, and each
-- statement here takes a fresh snapshot, so concurrent pops remove distinct items.
CREATE FUNCTION {schema}.pop_item(p_session text, p_op uuid) RETURNS json
LANGUAGE plpgsql AS $$
DECLARE
    v_item json;
    v_role text;
BEGIN
    PERFORM 1 FROM {schema}.conversations WHERE session_id = p_session FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    INSERT INTO {schema}.ops (session_id, op_id) VALUES (p_session, p_op)
        ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        SELECT o.result INTO v_item FROM {schema}.ops o
         WHERE o.session_id = p_session AND o.op_id = p_op;
        RETURN v_item;
    END IF;
    DELETE FROM {schema}.messages m
     WHERE m.session_id = p_session
       AND m.seq = (SELECT max(seq) FROM {schema}.messages WHERE session_id = p_session)
    RETURNING m.item, m.role INTO v_item, v_role;
    IF NOT FOUND THEN
        RETURN NULL;
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

-- Remove a conversation with its items, usage rows and operation ids.
CREATE FUNCTION {schema}.clear_session(p_session text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM {schema}.conversations WHERE session_id = p_session;
    DELETE FROM {schema}.ops WHERE session_id = p_session;
END
$$;
