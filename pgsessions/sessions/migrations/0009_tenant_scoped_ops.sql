-- pgsessions 0009: stored operation results are tenant-scoped (issue 26).
-- Until now ops kept no tenant: under tenant A, replaying an operation id of tenant B (raw SQL
-- as the application role) returned B's popped item or B's metadata. Isolation must not rest
-- on the operation id staying secret.
-- The rows move to tenant_ops, which records the tenant (the transaction's pgsessions.tenant
-- when the row is inserted, '' without one, like the tables of 0006) and keys by
-- (session_id, op_id, tenant): still by session, so the schema stays distributable. ops
-- becomes a view of the current tenant's rows, automatically updatable: every function that
-- reads, updates or inserts ops (those of 0004 and 0007, and any later one) now sees and
-- writes only its own tenant's results, and one tenant's id never makes another's call a
-- replay. Only prune_ops, which deletes old ids of every tenant, reads tenant_ops itself.

ALTER TABLE {schema}.ops RENAME TO tenant_ops;
ALTER TABLE {schema}.tenant_ops ADD COLUMN tenant text NOT NULL DEFAULT '';
-- the rows of conversations that still exist take their tenant; an id whose conversation is
-- gone keeps '' and is pruned within the hour
UPDATE {schema}.tenant_ops o SET tenant = c.tenant
  FROM {schema}.conversations c
 WHERE c.session_id = o.session_id AND c.tenant <> '';
ALTER TABLE {schema}.tenant_ops ALTER COLUMN tenant
    SET DEFAULT coalesce(pg_catalog.current_setting('pgsessions.tenant', true), '');
ALTER TABLE {schema}.tenant_ops DROP CONSTRAINT ops_pkey;
ALTER TABLE {schema}.tenant_ops ADD CONSTRAINT tenant_ops_pkey
    PRIMARY KEY (session_id, op_id, tenant);

CREATE VIEW {schema}.ops AS
    SELECT o.session_id, o.op_id, o.result, o.created_at
      FROM {schema}.tenant_ops o
     WHERE o.tenant = coalesce(pg_catalog.current_setting('pgsessions.tenant', true), '');

CREATE OR REPLACE FUNCTION {schema}.prune_ops(
    p_older_than interval DEFAULT interval '1 hour',
    p_batch integer DEFAULT 1000
) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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
