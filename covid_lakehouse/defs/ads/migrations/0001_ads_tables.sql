-- ads.ads (published: one live row per ad_id) and the archive's internal state machine.
-- IF NOT EXISTS: databases created before migrations existed already have these tables and keep their rows.
CREATE SCHEMA IF NOT EXISTS ads;
CREATE SEQUENCE IF NOT EXISTS ads.ads_row_version;
CREATE TABLE IF NOT EXISTS ads.ads (
    ad_id uuid PRIMARY KEY,
    ad_group text NOT NULL,
    ad_campaign integer,
    ad_campaign_raw text NOT NULL,
    ad_scheme_origin text,
    ad_scheme_approved boolean,
    shown_at timestamptz NOT NULL,
    backup_key text NOT NULL,
    loaded_at timestamptz NOT NULL,
    row_version bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS ads_shown_at_idx ON ads.ads (shown_at);
CREATE TABLE IF NOT EXISTS ads.archive_batches (
    batch_id uuid PRIMARY KEY,
    cutoff timestamptz NOT NULL,
    created_at timestamptz NOT NULL,
    status text NOT NULL CHECK (status IN ('planned', 'committed', 'done')),
    planned_rows bigint NOT NULL,
    archived_rows bigint,
    deleted_rows bigint,
    kept_rows bigint,
    snapshot_ids text,
    finished_at timestamptz
);
-- The state machine finishes one batch before it starts another.
CREATE UNIQUE INDEX IF NOT EXISTS archive_batches_one_open ON ads.archive_batches ((true)) WHERE status <> 'done';
-- No keys or indexes: it holds the one open batch's rows, written once and read whole (hash joins),
-- and a million index insertions would cost more than the archive's other steps together.
CREATE TABLE IF NOT EXISTS ads.archive_pending (
    batch_id uuid NOT NULL,
    ad_id uuid NOT NULL,
    row_version bigint NOT NULL
);
