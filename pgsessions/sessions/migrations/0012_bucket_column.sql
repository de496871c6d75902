-- pgsessions 0012: every row of a conversation carries its bucket, and the bucket is part of
-- the keys, so that logical replication can copy one bucket's rows to another cluster.
--
-- * bucket_of(session_id, buckets) is placement.bucket_of in SQL: the first 8 bytes of
--   SHA-256 of the id's UTF-8, big-endian unsigned, modulo the bucket count (a test compares
--   the two on many ids). bucket_count() is the set-up's count (shard_identity), or 1024 on a
--   cluster that is not a shard.
-- * conversations, messages, usage_logs, branches and tenant_ops gain `bucket integer NOT
--   NULL`. The rows that exist are filled by one rewrite per table (ALTER ... TYPE ... USING,
--   no dead tuples). New rows: a BEFORE INSERT trigger computes the bucket only when the
--   insert leaves it NULL (the trigger's WHEN clause: no function call otherwise); the append
--   path passes it instead: add_items_checked updates an existing conversation by session_id
--   (no hash; it inserts only a new one) and gives the row's bucket to every message, so an
--   append to an existing conversation computes no bucket at all. Measured primary-side CPU
--   per add_items of 4 items: see docs/sharding.md.
-- * Keys: a publication's row filter `WHERE (bucket ...)` needs, for UPDATE and DELETE, the
--   bucket in the table's replica identity, and the replica identity is the primary key. The
--   bucket joins each primary key as its last column: lookups by session_id keep using the
--   same index with the same order, and no index is added to the write path (a separate
--   unique index per table for REPLICA IDENTITY USING INDEX would cost one more index insert
--   per message). The price: ON CONFLICT targets name the bucket too (the write functions
--   below and the import's statements), and the primary key alone no longer says that a
--   session id is unique; it is, because the bucket is a function of the id. The foreign keys
--   of messages and usage_logs are (session_id, bucket), so an item's bucket is always its
--   conversation's; ON UPDATE CASCADE carries a recomputed bucket to them.
-- * conversations_bucket_idx (bucket, session_id) lets a move list a bucket's conversations
--   in order; its columns never change, so updates of a conversation stay HOT.
-- * A fresh sharded set-up whose bucket count is not 1024 recomputes the buckets of the rows
--   already there when its shard_identity row is written (same transaction).

-- plpgsql, not SQL: one SHA-256 held in a variable and bigint arithmetic (the sign bit of
-- the 8 bytes handled apart) is cheaper than numeric arithmetic inlined.
CREATE FUNCTION {schema}.bucket_of(p_session text, p_buckets integer) RETURNS integer
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
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

CREATE FUNCTION {schema}.bucket_count() RETURNS integer
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce((SELECT i.buckets FROM {schema}.shard_identity i), 1024)
$$;

CREATE FUNCTION {schema}.fill_bucket() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.bucket := {schema}.bucket_of(NEW.session_id, {schema}.bucket_count());
    RETURN NEW;
END
$$;

ALTER TABLE {schema}.conversations ADD COLUMN bucket integer;
ALTER TABLE {schema}.messages ADD COLUMN bucket integer;
ALTER TABLE {schema}.usage_logs ADD COLUMN bucket integer;
ALTER TABLE {schema}.branches ADD COLUMN bucket integer;
ALTER TABLE {schema}.tenant_ops ADD COLUMN bucket integer;

ALTER TABLE {schema}.messages DROP CONSTRAINT messages_session_id_fkey;
ALTER TABLE {schema}.usage_logs DROP CONSTRAINT usage_logs_session_id_fkey;

-- one rewrite per table fills the bucket of the rows there (the count is a constant here)
DO $$
DECLARE
    v_n integer := {schema}.bucket_count();
    v   record;
BEGIN
    FOR v IN SELECT * FROM (VALUES
            ('conversations', 'conversations_pkey', 'session_id, bucket'),
            ('messages', 'messages_pkey', 'session_id, branch_id, seq, bucket'),
            ('usage_logs', 'usage_logs_pkey', 'session_id, branch_id, user_turn_number, bucket'),
            ('branches', 'branches_pkey', 'session_id, branch_id, bucket'),
            ('tenant_ops', 'tenant_ops_pkey', 'session_id, op_id, tenant, bucket'))
            AS t(tab, pkey, cols) LOOP
        EXECUTE format(
            'ALTER TABLE {schema}.%I ALTER COLUMN bucket TYPE integer'
            ' USING {schema}.bucket_of(session_id, %s),'
            ' ALTER COLUMN bucket SET NOT NULL,'
            ' DROP CONSTRAINT %I, ADD CONSTRAINT %I PRIMARY KEY (%s)',
            v.tab, v_n, v.pkey, v.pkey, v.cols);
    END LOOP;
END
$$;

ALTER TABLE {schema}.messages ADD CONSTRAINT messages_session_id_fkey
    FOREIGN KEY (session_id, bucket) REFERENCES {schema}.conversations (session_id, bucket)
    ON UPDATE CASCADE ON DELETE CASCADE;
ALTER TABLE {schema}.usage_logs ADD CONSTRAINT usage_logs_session_id_fkey
    FOREIGN KEY (session_id, bucket) REFERENCES {schema}.conversations (session_id, bucket)
    ON UPDATE CASCADE ON DELETE CASCADE;

CREATE INDEX conversations_bucket_idx ON {schema}.conversations (bucket, session_id);

CREATE TRIGGER fill_bucket BEFORE INSERT ON {schema}.conversations
    FOR EACH ROW WHEN (NEW.bucket IS NULL) EXECUTE FUNCTION {schema}.fill_bucket();
CREATE TRIGGER fill_bucket BEFORE INSERT ON {schema}.messages
    FOR EACH ROW WHEN (NEW.bucket IS NULL) EXECUTE FUNCTION {schema}.fill_bucket();
CREATE TRIGGER fill_bucket BEFORE INSERT ON {schema}.usage_logs
    FOR EACH ROW WHEN (NEW.bucket IS NULL) EXECUTE FUNCTION {schema}.fill_bucket();
CREATE TRIGGER fill_bucket BEFORE INSERT ON {schema}.branches
    FOR EACH ROW WHEN (NEW.bucket IS NULL) EXECUTE FUNCTION {schema}.fill_bucket();
CREATE TRIGGER fill_bucket BEFORE INSERT ON {schema}.tenant_ops
    FOR EACH ROW WHEN (NEW.bucket IS NULL) EXECUTE FUNCTION {schema}.fill_bucket();

-- A set-up made with another bucket count than the rows were filled with: recompute them
-- (conversations' new buckets cascade to messages and usage_logs), seeing every tenant's rows.
CREATE FUNCTION {schema}.shard_identity_buckets() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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

CREATE TRIGGER shard_identity_buckets AFTER INSERT OR UPDATE OF buckets
    ON {schema}.shard_identity FOR EACH ROW EXECUTE FUNCTION {schema}.shard_identity_buckets();

-- add_items_checked as in 0010, updating an existing conversation before trying to insert
-- it; the messages take the bucket the conversation row holds.
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

-- store_usage as in 0010; the conflict target names the bucket.
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

-- update_metadata as in 0004 (SECURITY DEFINER since 0005); the conflict target names the
-- bucket.
CREATE OR REPLACE FUNCTION {schema}.update_metadata(
    p_session text, p_op uuid, p_metadata jsonb, p_replace boolean
) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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

-- New routines: EXECUTE only for the owner and the roles that may already run add_items
-- (bucket_of: a reader may compute a session's bucket).
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
        EXECUTE 'GRANT EXECUTE ON FUNCTION {schema}.bucket_of(text, integer) TO ' || r.grantee;
    END LOOP;
END
$$;
