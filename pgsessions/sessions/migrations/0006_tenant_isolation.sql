-- pgsessions 0006: tenant isolation with row-level security.
-- Every conversation, message and usage row records its tenant: the transaction-local
-- setting pgsessions.tenant when the row is inserted ('' without one). Policies keep each
-- tenant to its own rows; they take effect only once `pgsessions migrate --tenant-isolation on`
-- enables and forces row-level security on the three tables (forced: the SECURITY DEFINER
-- write functions run as the owner and must obey the policies too). Until then nothing
-- changes. No write function is redefined: their INSERTs take the tenant from the default.
-- ops keeps no tenant: the application role cannot read it, and the functions reach a row
-- only by its session id and a random operation id.

-- A constant default first (no table rewrite), then the setting for new rows. Each ALTER
-- TABLE locks its table until the migration commits: messages comes after the index build on
-- conversations, so history reads (messages only) go on meanwhile.
ALTER TABLE {schema}.conversations ADD COLUMN tenant text NOT NULL DEFAULT '';
ALTER TABLE {schema}.conversations ALTER COLUMN tenant
    SET DEFAULT coalesce(pg_catalog.current_setting('pgsessions.tenant', true), '');

-- list_sessions names its tenant ('' without one): one index serves every tenant's pages
DROP INDEX {schema}.conversations_updated_idx;
CREATE INDEX conversations_tenant_updated_idx
    ON {schema}.conversations (tenant, updated_at DESC, session_id DESC);

ALTER TABLE {schema}.messages ADD COLUMN tenant text NOT NULL DEFAULT '';
ALTER TABLE {schema}.messages ALTER COLUMN tenant
    SET DEFAULT coalesce(pg_catalog.current_setting('pgsessions.tenant', true), '');
ALTER TABLE {schema}.usage_logs ADD COLUMN tenant text NOT NULL DEFAULT '';
ALTER TABLE {schema}.usage_logs ALTER COLUMN tenant
    SET DEFAULT coalesce(pg_catalog.current_setting('pgsessions.tenant', true), '');

-- The tenant of the current transaction; an error when none is set, so that with isolation
-- on a statement without a tenant fails loudly instead of seeing nothing. The policies call
-- it through a scalar subquery: once per statement, not per row.
CREATE FUNCTION {schema}.current_tenant() RETURNS text
LANGUAGE plpgsql STABLE AS $$
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

-- Set the tenant for the rest of the current transaction only (a pooled connection never
-- carries it into another transaction), after checking that isolation is really enforced:
-- row-level security enabled and forced on all three tables, owned by a role that does not
-- bypass it (the write functions run as that owner), and not bypassed by the calling role
-- (superuser, BYPASSRLS). Returns the tenant.
CREATE FUNCTION {schema}.set_tenant(p_tenant text) RETURNS text
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
                     '{schema}.usage_logs'::regclass);
    IF v_forced <> 3 THEN
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

CREATE POLICY tenant_isolation ON {schema}.conversations
    USING (tenant = (SELECT {schema}.current_tenant()))
    WITH CHECK (tenant = (SELECT {schema}.current_tenant()));
CREATE POLICY tenant_isolation ON {schema}.messages
    USING (tenant = (SELECT {schema}.current_tenant()))
    WITH CHECK (tenant = (SELECT {schema}.current_tenant()));
CREATE POLICY tenant_isolation ON {schema}.usage_logs
    USING (tenant = (SELECT {schema}.current_tenant()))
    WITH CHECK (tenant = (SELECT {schema}.current_tenant()));

REVOKE EXECUTE ON ALL ROUTINES IN SCHEMA {schema} FROM PUBLIC;
