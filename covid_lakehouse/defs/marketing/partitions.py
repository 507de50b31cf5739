"""Daily partitions shared by every marketing asset, and the trailing look-back window each source
re-reads every day (late attribution and late-arriving rows are merged on natural keys)."""

from datetime import UTC, date, datetime, timedelta

import dagster as dg

START_DATE = "2024-01-01"
DAILY = dg.DailyPartitionsDefinition(start_date=START_DATE, end_offset=0)

# Days re-read by the daily run: Facebook restates conversions within its 28-day attribution window,
# Google Ads within ~14 days; CleverTap SDKs upload offline events late; app rows commit late.
LOOKBACK_DAYS = {"facebook": 28, "google_ads": 14, "clevertap": 3, "rds": 2}

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def trailing_window(days: int, now: datetime) -> tuple[str, str]:
    """(first, last) partition keys of the ``days`` latest complete days at ``now``."""
    with dg.partition_loading_context(effective_dt=now):
        last = DAILY.get_last_partition_key()
    if last is None:
        raise ValueError(f"no complete day before {now.isoformat()} (partitions start {START_DATE})")
    first = max(date.fromisoformat(last) - timedelta(days=days - 1), date.fromisoformat(START_DATE))
    return first.isoformat(), last


def window_days(context: dg.AssetExecutionContext) -> list[date]:
    """The days of this run's partition (range), oldest first."""
    window = context.partition_time_window
    first, end = window.start.astimezone(UTC).date(), window.end.astimezone(UTC).date()
    return [first + timedelta(days=i) for i in range((end - first).days)]
