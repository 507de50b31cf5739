"""Daily at 09:00 New York time (the cron is evaluated in America/New_York, so DST is followed):
download the dataset; the sensor takes it from there."""

import dagster as dg

from covid_lakehouse.defs.ny_testing.asset_keys import RAW_KEY
from covid_lakehouse.lib.policies import max_runtime

raw_job = dg.define_asset_job("ny_testing_raw_job", selection=[RAW_KEY], tags=max_runtime(hours=1),
                              description="Download rows.json and keep it in S3 (the county load follows via the sensor).")


@dg.schedule(name="ny_testing_daily_0900", cron_schedule="0 9 * * *", execution_timezone="America/New_York",
             job=raw_job, default_status=dg.DefaultScheduleStatus.RUNNING)
def ny_testing_daily(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    return dg.RunRequest(tags={"ny_testing/scheduled_for": context.scheduled_execution_time.isoformat()})
