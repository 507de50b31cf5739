-- CleverTap event keys no longer hash the export-time profile (KEY_VERSION 2). Rows keyed the old way
-- keep key_version 1 until the next clevertap_events run re-keys them in Python (clevertap_rekey.py),
-- before it stages anything: the identity needs the account's time zone, which only the run knows.
-- account_timezone: the zone the row's ts was read in (NULL for rows loaded before it was kept).
-- The default only marks the rows already there; every load states the version it wrote.
ALTER TABLE marketing.clevertap_events
    ADD COLUMN IF NOT EXISTS key_version integer NOT NULL DEFAULT 1,
    ADD COLUMN IF NOT EXISTS account_timezone text;
ALTER TABLE marketing.clevertap_events ALTER COLUMN key_version DROP DEFAULT;
CREATE INDEX IF NOT EXISTS clevertap_events_legacy_keys ON marketing.clevertap_events (event_date) WHERE key_version = 1;
