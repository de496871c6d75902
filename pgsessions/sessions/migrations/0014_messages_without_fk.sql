-- pgsessions 0014: messages lose their foreign key to conversations; what it did is done by
-- the code that changes conversations.
--
-- On every add_items the key's check ran once per inserted row: a lookup of the conversation
-- row (whose version the same add had just made), a FOR KEY SHARE lock on it and a WAL record
-- for that lock. It was a quarter of the primary's CPU per add (measured with pgbench on the
-- 2-core test machine, batches of 8 adds of 2 items: 200-217 us -> 153-164 us of backend CPU
-- per add) and 60 bytes of WAL per add. Nothing lost by dropping it:
-- 1. Every insert into messages locks its conversation row first (add_items_checked updates
--    it, pop_item and replace_suffix take it FOR UPDATE), so no message is written for a
--    conversation being deleted, and its bucket is read from that row.
-- 2. ON DELETE CASCADE: the conversation_gone trigger deletes the conversation's messages
--    (as the deleting role, under its row-level security: a conversation and its messages
--    always have the same tenant). usage_logs keeps its key.
-- 3. ON UPDATE CASCADE (the bucket): shard_identity_buckets gives the messages their
--    conversation's new bucket.

ALTER TABLE {schema}.messages DROP CONSTRAINT messages_session_id_fkey;

CREATE OR REPLACE FUNCTION {schema}.conversation_gone() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM {schema}.messages
     WHERE session_id = OLD.session_id AND bucket = OLD.bucket;
    UPDATE {schema}.branches SET deleted_at = now()
     WHERE session_id = OLD.session_id AND deleted_at IS NULL;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION {schema}.shard_identity_buckets() RETURNS trigger
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
