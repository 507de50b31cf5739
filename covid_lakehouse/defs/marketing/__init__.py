"""Marketing: Facebook Ads, Google Ads, CleverTap and the app's RDS database -> typed warehouse tables
and one cross-platform model, marketing.ad_performance_daily (see docs/marketing.md)."""
