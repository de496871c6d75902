-- pgsessions 0002: clear_session keeps the session's operation ids.
-- Deleting them let a write whose reply was lost before a concurrent clear be applied a
-- second time when the router retried it (the cleared items came back). The ids are pruned
-- by age like every other (prune_ops), so keeping them costs nothing lasting.

CREATE OR REPLACE FUNCTION {schema}.clear_session(p_session text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- items and usage rows go with the conversation (ON DELETE CASCADE)
    DELETE FROM {schema}.conversations WHERE session_id = p_session;
END
$$;
