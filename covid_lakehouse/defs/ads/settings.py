"""Where the ads domain keeps its data, and the settings an operator may change (from the environment)."""

import os
from datetime import timedelta

import dagster as dg

# Fixed names: the seed's contract ("ad-data/backup", "ad-data/archive") and the warehouse table.
BUCKET = "ad-data"
BACKUP_PREFIX = "backup/"
PG_SCHEMA = "ads"
ARCHIVE_NAMESPACE = "ads"
ARCHIVE_TABLE = "ads_archive"
ARCHIVE_LOCATION = f"s3://{BUCKET}/archive/{ARCHIVE_TABLE}"

API_URL_ENV = "ADS_API_URL"
ARCHIVE_RETENTION_ENV = "ADS_ARCHIVE_RETENTION_HOURS"
BACKUP_RETENTION_ENV = "ADS_BACKUP_RETENTION_DAYS"
DEFAULT_ARCHIVE_RETENTION = timedelta(hours=24)


class AdsSettings(dg.ConfigurableResource):
    """Settings of the ads domain. A field left unset falls back to its environment variable, read at
    run time (so `make demo` and deployments configure the domain without code)."""

    api_url: str | None = None  # ADS_API_URL; the ad API has no public default
    pages_per_run: int = 1  # API calls per load run; each returns 100 ads
    payload_attempts: int = 3  # calls per page when the body is unusable (malformed, changed fields)
    payload_backoff_s: float = 2.0
    archive_retention_hours: float | None = None  # ADS_ARCHIVE_RETENTION_HOURS, default 24
    archive_chunk_rows: int = 100_000  # rows per read from PostgreSQL / write to Iceberg
    backup_retention_days: int | None = None  # ADS_BACKUP_RETENTION_DAYS, default: keep forever

    def resolved_api_url(self) -> str:
        url = self.api_url or os.environ.get(API_URL_ENV)
        if not url:
            raise dg.Failure(
                description=f"the ads API URL is not configured: set the environment variable {API_URL_ENV} "
                "(there is no public default; `make demo` and `make up` set it to the bundled mock API)",
                allow_retries=False,
            )
        return url

    def archive_retention(self) -> timedelta:
        hours = self.archive_retention_hours
        if hours is None:
            hours = _env_number(ARCHIVE_RETENTION_ENV, DEFAULT_ARCHIVE_RETENTION.total_seconds() / 3600)
        if hours <= 0:
            raise dg.Failure(description=f"archive retention must be positive hours, got {hours}",
                             allow_retries=False)
        return timedelta(hours=hours)

    def backup_retention_days_resolved(self) -> int | None:
        days = self.backup_retention_days
        if days is None and os.environ.get(BACKUP_RETENTION_ENV):
            days = int(_env_number(BACKUP_RETENTION_ENV, 0))
        if days is not None and days < 1:
            raise dg.Failure(description=f"backup retention must be at least 1 day, got {days}",
                             allow_retries=False)
        return days


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise dg.Failure(description=f"environment variable {name}={raw!r} is not a number",
                         allow_retries=False) from None
