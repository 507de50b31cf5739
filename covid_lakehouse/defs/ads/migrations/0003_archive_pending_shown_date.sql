-- The archive plans each row's shown date (the Iceberg partition) with its version, so the write step
-- copies one group of days at a time (WHERE on the planned date) instead of sorting the whole batch by
-- date: at 5,000,000 rows that sort of wide rows spilled to disk and grew faster than the rows.
-- NULL for rows planned before this migration: the write step fills them in before it copies.
-- The plan builds its index on shown_date after inserting the batch (archive/plan.py): cheaper than
-- maintaining one row by row.
ALTER TABLE ads.archive_pending ADD COLUMN IF NOT EXISTS shown_date date;
