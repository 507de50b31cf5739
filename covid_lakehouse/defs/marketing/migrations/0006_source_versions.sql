-- Per table, account/customer and day: when the API pages last merged for that slice were fetched
-- (lib/source_versions.py). Overlapping look-back runs can commit out of order (a slow or retried run
-- that read the API before another one); a slice whose recorded fetch is newer than the run's is left
-- alone, so restated values never go back to older ones. The analyst reads it (default privileges, 0002).
CREATE TABLE IF NOT EXISTS marketing.source_versions (
    source text NOT NULL,
    unit text NOT NULL,
    day date NOT NULL,
    source_version text NOT NULL,
    fetched_at timestamptz NOT NULL,
    published_at timestamptz NOT NULL,
    PRIMARY KEY (source, unit, day)
);
