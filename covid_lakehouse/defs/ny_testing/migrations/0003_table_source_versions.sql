-- Which raw download each published table reflects: every county table and the reference table. A county
-- run pins one download; a retried run of an older download must not write its values over a newer one's,
-- so publishing a table locks its row here and compares fetch times in the same transaction
-- (warehouse.Warehouse.claim_version). Keyed by table: a county the source respells without changing its
-- table name ("St. Lawrence" -> "St Lawrence") keeps one row, whose county is the name last published
-- (the all_counties view shows it; NULL for the reference table).
CREATE TABLE IF NOT EXISTS ny_testing_reference.table_versions (
    target_table text PRIMARY KEY,
    county text,
    raw_key text NOT NULL,
    fetched_at timestamptz NOT NULL,
    published_at timestamptz NOT NULL
);
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'analyst') THEN
        GRANT SELECT ON ny_testing_reference.table_versions TO analyst;
    END IF;
END
$$;
