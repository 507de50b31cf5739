"""First load: a sensor that, for each source never materialized, requests the same look-back window
run the schedule would (once, remembered in its cursor). Stopped by default in deployments, where a
backfill is the deliberate way to load history; `make demo` ticks it to materialize a few days."""

import json
from datetime import UTC, datetime

import dagster as dg

from covid_lakehouse.defs.marketing.assets import GROUP, SOURCE_KEYS
from covid_lakehouse.defs.marketing.partitions import LOOKBACK_DAYS
from covid_lakehouse.defs.marketing.schedules import lookback_run_request
from covid_lakehouse.lib.settings import SettingError, setting

BOOTSTRAP_DAYS = setting("MARKETING_BOOTSTRAP_DAYS", "shortens the first load's window to this many days (the "
                         "demo uses 3); unset: each source's look-back window", scope="marketing")
BOOTSTRAP_DAYS_ENV = BOOTSTRAP_DAYS.name


def bootstrap_days() -> int | None:
    days = BOOTSTRAP_DAYS.number(minimum=1)
    if days is not None and days != int(days):
        raise SettingError(f"{BOOTSTRAP_DAYS_ENV} must be a whole number of days, got {days:g}")
    return None if days is None else int(days)


@dg.sensor(name="marketing_bootstrap", target=dg.AssetSelection.groups(GROUP), minimum_interval_seconds=300,
           default_status=dg.DefaultSensorStatus.STOPPED,
           description="Requests each never-loaded source's look-back window once")
def marketing_bootstrap(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    requested = set(json.loads(context.cursor or "[]"))
    pending = [s for s in LOOKBACK_DAYS if s not in requested
               and context.instance.get_latest_materialization_event(SOURCE_KEYS[s][0]) is None]
    if not pending:
        return dg.SkipReason("every source has been loaded or requested; the daily schedule keeps them current")
    days, now = bootstrap_days(), datetime.now(UTC)
    runs = [lookback_run_request(s, now, min(days, LOOKBACK_DAYS[s]) if days else None) for s in pending]
    return dg.SensorResult(run_requests=runs, cursor=json.dumps(sorted(requested | set(pending))))
