-- pgsessions 0005: writes run with the schema owner's rights, so an application role needs
-- no INSERT, UPDATE, DELETE or TRUNCATE on any table (see migrate(grant_to=...)).
-- Each write function becomes SECURITY DEFINER with a fixed search_path (every object in the
-- bodies is schema-qualified), and only roles granted EXECUTE may call them.
-- add_items_committed stays SECURITY INVOKER: it COMMITs, which a SECURITY DEFINER procedure
-- cannot; it only calls add_items.

ALTER FUNCTION {schema}.prune_ops(interval, integer)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION {schema}.add_items(text, uuid, json[], text[], text[], jsonb)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION {schema}.pop_item(text, uuid)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION {schema}.clear_session(text)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION {schema}.clear_session(text, uuid)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION {schema}.store_usage(text, uuid, text, integer, bigint, bigint, bigint, jsonb, jsonb)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION {schema}.update_metadata(text, uuid, jsonb, boolean)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION {schema}.replace_suffix(text, uuid, timestamptz, bigint[], bigint, json[], text[], text[])
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- PostgreSQL grants EXECUTE on new routines to PUBLIC: keep that only for the owner and the
-- roles migrate(grant_to=...) names.
REVOKE EXECUTE ON ALL ROUTINES IN SCHEMA {schema} FROM PUBLIC;
