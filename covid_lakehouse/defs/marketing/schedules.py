"""The daily schedule: for each source, ONE run over its trailing look-back window (a partition range
run), so late attribution and late rows are re-read and merged on natural keys."""

from datetime import datetime

import dagster as dg

from covid_lakehouse.defs.marketing.assets import GROUP, SOURCE_KEYS
from covid_lakehouse.defs.marketing.partitions import (
    LOOKBACK_DAYS,
    RANGE_END_TAG,
    RANGE_START_TAG,
    trailing_window,
)
from covid_lakehouse.lib.policies import max_runtime

# dagster.yaml limits runs per value of this tag: one source's runs never hammer its API in parallel.
POOL_TAG = "covid_lakehouse/pool"


def lookback_run_request(source: str, now: datetime, days: int | None = None) -> dg.RunRequest:
    """One run materializing ``source``'s assets for its trailing window ending with the last complete day."""
    first, last = trailing_window(days or LOOKBACK_DAYS[source], now)
    return dg.RunRequest(
        run_key=f"marketing-{source}-{first}-{last}",
        asset_selection=SOURCE_KEYS[source],
        tags={RANGE_START_TAG: first, RANGE_END_TAG: last, POOL_TAG: f"marketing_{source}", "marketing/source": source,
              **max_runtime(hours=3)},  # an asset-selection run inherits no job tags
    )


@dg.schedule(name="marketing_daily", cron_schedule="0 6 * * *", execution_timezone="UTC",
             target=dg.AssetSelection.groups(GROUP), default_status=dg.DefaultScheduleStatus.RUNNING,
             description="06:00 UTC: one run per source over its look-back window "
                         + ", ".join(f"{s} {d} days" for s, d in LOOKBACK_DAYS.items()))
def marketing_daily(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    return [lookback_run_request(source, context.scheduled_execution_time) for source in LOOKBACK_DAYS]
