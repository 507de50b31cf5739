-- The analyst reads every county table and the all_counties view (those that exist and, through default
-- privileges, those the load creates later) and the reference table; not the staging schema.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'analyst') THEN
        GRANT USAGE ON SCHEMA ny_testing, ny_testing_reference TO analyst;
        GRANT SELECT ON ALL TABLES IN SCHEMA ny_testing TO analyst;
        ALTER DEFAULT PRIVILEGES IN SCHEMA ny_testing GRANT SELECT ON TABLES TO analyst;
        GRANT SELECT ON ny_testing_reference.geography_totals TO analyst;
    END IF;
END
$$;
