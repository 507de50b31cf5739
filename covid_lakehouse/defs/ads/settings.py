"""Where the ads domain keeps its data, and the settings an operator may change (from the environment)."""

from datetime import timedelta

import dagster as dg

from covid_lakehouse.lib.http.hosts import source_url
from covid_lakehouse.lib.settings import SettingError, setting

# Fixed names: the seed's contract ("ad-data/backup", "ad-data/archive") and the warehouse table.
BUCKET = "ad-data"
BACKUP_PREFIX = "backup/"
PG_SCHEMA = "ads"
ARCHIVE_NAMESPACE = "ads"
ARCHIVE_TABLE = "ads_archive"
ARCHIVE_LOCATION = f"s3://{BUCKET}/archive/{ARCHIVE_TABLE}"

API_URL = setting("ADS_API_URL", "the ad API (no public default; `make demo`/`make up` serve the bundled mock)",
                  scope="ads")
ARCHIVE_RETENTION = setting("ADS_ARCHIVE_RETENTION_HOURS", "ads shown longer ago than this are archived and deleted",
                            default="24", scope="ads")
BACKUP_RETENTION = setting("ADS_BACKUP_RETENTION_DAYS", "raw API backups older than this are deleted (unset: kept "
                           "forever)", scope="ads")
API_URL_ENV, ARCHIVE_RETENTION_ENV, BACKUP_RETENTION_ENV = API_URL.name, ARCHIVE_RETENTION.name, BACKUP_RETENTION.name


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
        # No public default: only the host the operator set in ADS_API_URL (lib/http/hosts.py).
        return source_url(API_URL, self.api_url, field="api_url")

    def archive_retention(self) -> timedelta:
        hours = ARCHIVE_RETENTION.number(self.archive_retention_hours)
        if hours <= 0:
            raise SettingError(f"{ARCHIVE_RETENTION.name}: archive retention must be positive hours, got {hours:g}")
        return timedelta(hours=hours)

    def backup_retention_days_resolved(self) -> int | None:
        days = BACKUP_RETENTION.number(self.backup_retention_days, minimum=1)
        return None if days is None else int(days)
