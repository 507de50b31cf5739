"""ads: third-party ad API -> raw backup in S3 -> PostgreSQL ads.ads; daily archive of old rows to an
Iceberg table in s3://ad-data/archive/ (see docs/ads.md)."""
