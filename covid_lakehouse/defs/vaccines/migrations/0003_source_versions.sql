-- The raw_sources download the published vaccines tables reflect (lib/source_versions.py). A publish
-- claims its row under the publish lock and writes nothing when the row names a newer download: a slow
-- or retried run of an older download never puts its numbers back over a newer one's.
CREATE TABLE IF NOT EXISTS vaccines.source_versions (
    published text PRIMARY KEY,
    source_version text NOT NULL,
    fetched_at timestamptz NOT NULL,
    published_at timestamptz NOT NULL
);
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'analyst') THEN
        GRANT SELECT ON vaccines.source_versions TO analyst;
    END IF;
END
$$;
