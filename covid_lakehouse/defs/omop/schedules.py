"""Daily run of every tenant (the source database changes without notice; files have their sensor)."""

import dagster as dg

from covid_lakehouse.defs.omop.partitions import TENANT_PARTITIONS_NAME
from covid_lakehouse.defs.omop.sensors import omop_tenant_job, tenant_run_request


@dg.schedule(name="omop_daily", cron_schedule="0 5 * * *", execution_timezone="UTC", job=omop_tenant_job,
             default_status=dg.DefaultScheduleStatus.RUNNING,
             description="05:00 UTC: one run per tenant partition (each tenant separately, so one tenant's "
                         "failure never blocks another).")
def omop_daily(context: dg.ScheduleEvaluationContext):
    tenants = context.instance.get_dynamic_partitions(TENANT_PARTITIONS_NAME)
    if not tenants:
        return dg.SkipReason("no tenant registered yet (the omop_tenants sensor registers them)")
    day = context.scheduled_execution_time.date().isoformat()
    return [tenant_run_request(name, run_key=f"daily:{name}:{day}", reason="daily") for name in tenants]
