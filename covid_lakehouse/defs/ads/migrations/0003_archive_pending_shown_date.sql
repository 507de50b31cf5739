-- The archive plans each row's shown date (the Iceberg partition) with its version, so the write step
-- copies one group of days at a time (WHERE on the planned date) instead of sorting the whole batch by
-- date: at 5,000,000 rows that sort of wide rows spilled to disk and grew faster than the rows.
-- NULL for rows planned before this migration: the write step fills them in before it copies.
ALTER TABLE ads.archive_pending ADD COLUMN IF NOT EXISTS shown_date date;
-- Read once per day group; one small key per row, so cheaper to keep than the sort it replaces.
CREATE INDEX IF NOT EXISTS archive_pending_shown_date_idx ON ads.archive_pending (shown_date);
