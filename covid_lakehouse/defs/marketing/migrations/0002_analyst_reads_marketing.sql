-- Every marketing table is published: the typed per-source tables and the ad_performance_daily model.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'analyst') THEN
        GRANT USAGE ON SCHEMA marketing TO analyst;
        GRANT SELECT ON ALL TABLES IN SCHEMA marketing TO analyst;
        ALTER DEFAULT PRIVILEGES IN SCHEMA marketing GRANT SELECT ON TABLES TO analyst;
    END IF;
END
$$;
