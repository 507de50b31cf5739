-- The read-only analyst reads published tables and nothing else. Earlier versions granted it every
-- schema and table warehouse_writer created (default privileges), which exposed internal state (ops,
-- the ads archive's bookkeeping) and generated demo sources. Now each published schema grants its
-- own tables in its domain's migrations, and this takes the blanket grants back.
-- Guarded: a deployment without an analyst role skips the grants (deploy/postgres/init.sh creates it).
DO $$
DECLARE
    schema_name name;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'analyst') THEN
        RAISE NOTICE 'no analyst role: read-only grants skipped';
        RETURN;
    END IF;
    ALTER DEFAULT PRIVILEGES REVOKE SELECT ON TABLES FROM analyst;
    ALTER DEFAULT PRIVILEGES REVOKE USAGE ON SCHEMAS FROM analyst;
    FOR schema_name IN
        SELECT nspname FROM pg_namespace WHERE nspowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
    LOOP
        EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM analyst', schema_name);
        EXECUTE format('REVOKE USAGE ON SCHEMA %I FROM analyst', schema_name);
    END LOOP;
    -- platform.*: tables written by the Postgres IO manager (the smoke asset), all published.
    CREATE SCHEMA IF NOT EXISTS platform;
    GRANT USAGE ON SCHEMA platform TO analyst;
    GRANT SELECT ON ALL TABLES IN SCHEMA platform TO analyst;
    ALTER DEFAULT PRIVILEGES IN SCHEMA platform GRANT SELECT ON TABLES TO analyst;
END
$$;
