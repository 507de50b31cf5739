-- Both vaccines tables are published.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'analyst') THEN
        GRANT USAGE ON SCHEMA vaccines TO analyst;
        GRANT SELECT ON vaccines.people_per_dose, vaccines.excluded_jurisdictions TO analyst;
    END IF;
END
$$;
