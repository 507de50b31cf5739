-- Facebook date_start and Google segments.date are days in each ad account's own time zone: keep the
-- zone with every row (NULL for rows loaded before it was kept) so that "which day" is never a guess.
ALTER TABLE marketing.facebook_ad_insights_daily ADD COLUMN IF NOT EXISTS account_timezone text;
ALTER TABLE marketing.google_ads_ad_daily ADD COLUMN IF NOT EXISTS account_timezone text;
ALTER TABLE marketing.ad_performance_daily ADD COLUMN IF NOT EXISTS account_timezone text;
