-- Which raw download each county table reflects. A county run pins one download; a retried run of an older
-- download must not write its values over a newer one's, so publishing a county locks its row here and
-- compares fetch times (warehouse.publish_county). Keyed by table: a county the source renames without
-- changing its table name ("St. Lawrence" -> "St Lawrence") keeps one row, whose county is the name last
-- published (the all_counties view shows it).
CREATE TABLE IF NOT EXISTS ny_testing_reference.county_versions (
    county_table text PRIMARY KEY,
    county text NOT NULL,
    raw_key text NOT NULL,
    fetched_at timestamptz NOT NULL,
    published_at timestamptz NOT NULL
);
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'analyst') THEN
        GRANT SELECT ON ny_testing_reference.county_versions TO analyst;
    END IF;
END
$$;
