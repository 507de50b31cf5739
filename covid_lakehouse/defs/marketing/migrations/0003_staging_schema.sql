-- Where marketing loads stage their rows while a source is read (UNLOGGED tables, one per asset run,
-- dropped when the run publishes or fails). Separate from "marketing" so that analysts, who read every
-- table there, never see unaudited rows.
CREATE SCHEMA IF NOT EXISTS marketing_staging;
