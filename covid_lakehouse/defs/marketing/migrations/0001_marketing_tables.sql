-- The marketing domain's tables: one typed table per source and the cross-platform model.
-- IF NOT EXISTS: databases created before migrations existed already have these tables and keep their rows.
CREATE SCHEMA IF NOT EXISTS marketing;
CREATE TABLE IF NOT EXISTS marketing.facebook_ad_insights_daily (
    account_id text NOT NULL, account_name text, account_currency text NOT NULL,
    campaign_id text NOT NULL, campaign_name text, adset_id text, adset_name text,
    ad_id text NOT NULL, ad_name text, date date NOT NULL,
    impressions bigint NOT NULL, clicks bigint NOT NULL, spend numeric(20, 6) NOT NULL,
    actions jsonb NOT NULL, raw_object text NOT NULL, loaded_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, ad_id, date));
CREATE TABLE IF NOT EXISTS marketing.google_ads_ad_daily (
    customer_id text NOT NULL, customer_name text, currency_code text NOT NULL,
    campaign_id text NOT NULL, campaign_name text, ad_group_id text NOT NULL, ad_group_name text,
    ad_id text NOT NULL, date date NOT NULL,
    impressions bigint NOT NULL, clicks bigint NOT NULL, cost_micros bigint NOT NULL,
    cost numeric(20, 6) GENERATED ALWAYS AS (cost_micros / 1000000.0) STORED,
    conversions double precision NOT NULL, raw_object text NOT NULL, loaded_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, ad_group_id, ad_id, date));
CREATE TABLE IF NOT EXISTS marketing.clevertap_events (
    event_key text NOT NULL, occurrence integer NOT NULL, event_name text NOT NULL,
    event_date date NOT NULL, event_ts timestamptz NOT NULL, profile_object_id text,
    platform text, app_version text, event_props jsonb NOT NULL, session_props jsonb NOT NULL,
    raw_object text NOT NULL, loaded_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_key, occurrence));
CREATE TABLE IF NOT EXISTS marketing.rds_customers (
    customer_id bigint PRIMARY KEY, email_sha256 text, country text,
    created_at timestamptz NOT NULL, source_updated_at timestamptz NOT NULL, loaded_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS marketing.rds_orders (
    order_id bigint PRIMARY KEY, customer_id bigint NOT NULL, status text NOT NULL,
    amount numeric(14, 2) NOT NULL, currency text NOT NULL,
    created_at timestamptz NOT NULL, source_updated_at timestamptz NOT NULL, loaded_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS marketing.ad_performance_daily (
    platform text NOT NULL, account_id text NOT NULL, account_name text,
    campaign_id text NOT NULL, campaign_name text, ad_id text NOT NULL, date date NOT NULL,
    impressions bigint NOT NULL, clicks bigint NOT NULL, spend numeric(20, 6) NOT NULL,
    currency text NOT NULL, conversions numeric(20, 6) NOT NULL, loaded_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (platform, account_id, ad_id, date));
