"""Raw retention: the raw bucket keeps what the APIs sent, personal data included (CleverTap profiles
carry e-mail addresses and phone numbers), so what is under a prefix with a retention is deleted once
it is older than that many days, by a daily job.

Only prefixes listed in RAW_RETENTION_DAYS expire; everything else is kept (the ny_testing and vaccines
downloads are public data and the provenance of published rows). A marketing replay
(`replay_run_id`) needs its raw pages: it works only within the retention.
"""

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import dagster as dg

from covid_lakehouse.lib.policies import max_runtime
from covid_lakehouse.lib.s3 import LakeS3Resource
from covid_lakehouse.lib.settings import SettingError, setting

RAW_BUCKET = "raw"
RAW_RETENTION_DAYS = setting(
    "RAW_RETENTION_DAYS", "raw-bucket retention per key prefix, `prefix/=days,...` (the longest matching prefix "
    "wins; objects under no listed prefix are kept): raw pages with personal data are deleted this many days "
    "after they were stored, by the daily `raw_retention_job`", default="marketing/clevertap/=90")
_DELETE_BATCH = 1000  # DeleteObjects' limit


def retention_rules(raw: str | None = None) -> dict[str, int]:
    """RAW_RETENTION_DAYS parsed: {prefix: days}; a clear error naming the setting otherwise."""
    text = raw if raw is not None else RAW_RETENTION_DAYS.get() or ""
    rules: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        prefix, sep, days = item.partition("=")
        prefix = prefix.strip()
        if not sep or not prefix.endswith("/") or prefix.startswith("/") or ".." in prefix:
            raise SettingError(f"{RAW_RETENTION_DAYS.name}: {item!r} is not `prefix/=days` (a relative key prefix "
                               "ending in '/')")
        try:
            rules[prefix] = int(days)
        except ValueError:
            raise SettingError(f"{RAW_RETENTION_DAYS.name}: {item!r}: days must be a whole number") from None
        if rules[prefix] < 1:
            raise SettingError(f"{RAW_RETENTION_DAYS.name}: {item!r}: days must be at least 1")
    return rules


def expire_raw(client, rules: Mapping[str, int], now: datetime, bucket: str = RAW_BUCKET) -> dict[str, int]:
    """Delete every object under a rule's prefix stored more than its days before ``now`` (a longer,
    more specific prefix's rule wins over a shorter one's for its objects): {prefix: deleted}."""
    deleted: dict[str, int] = {}
    for prefix, days in rules.items():
        cutoff = now - timedelta(days=days)
        longer = [p for p in rules if p != prefix and p.startswith(prefix)]
        expired: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if obj["LastModified"] < cutoff and not any(obj["Key"].startswith(p) for p in longer):
                    expired.append(obj["Key"])
        for start in range(0, len(expired), _DELETE_BATCH):
            batch = [{"Key": key} for key in expired[start:start + _DELETE_BATCH]]
            response = client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            if response.get("Errors"):
                failed = ", ".join(f"{e['Key']}: {e.get('Code')}" for e in response["Errors"][:5])
                raise RuntimeError(f"raw retention: {len(response['Errors'])} object(s) under {prefix} were not "
                                   f"deleted: {failed}")
        deleted[prefix] = len(expired)
    return deleted


@dg.op(description="Delete raw objects older than their prefix's retention (RAW_RETENTION_DAYS).")
def expire_raw_objects(context: dg.OpExecutionContext, s3: LakeS3Resource) -> None:
    rules = retention_rules()
    deleted = expire_raw(s3.get_client(), rules, datetime.now(UTC))
    for prefix, count in deleted.items():
        context.log.info("raw retention: %d object(s) older than %d day(s) deleted under s3://%s/%s",
                         count, rules[prefix], RAW_BUCKET, prefix)


@dg.job(description="Raw-bucket retention: personal data in raw API pages is kept only as long as configured.",
        tags=max_runtime(hours=1))
def raw_retention_job() -> None:
    expire_raw_objects()


raw_retention_daily = dg.ScheduleDefinition(
    name="raw_retention_daily", job=raw_retention_job, cron_schedule="30 3 * * *", execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

