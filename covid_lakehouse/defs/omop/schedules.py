"""Daily run of every changed tenant (the source database changes without notice; files have their
sensor). The tick gates each tenant on its cheap source signal (gate.py): an unchanged tenant gets a
"no change" observation instead of a run."""

import logging
from datetime import date

import dagster as dg

from covid_lakehouse.defs.omop.gate import gate_tenants
from covid_lakehouse.defs.omop.partitions import TENANT_PARTITIONS_NAME
from covid_lakehouse.defs.omop.sensors import omop_tenant_job, tenant_run_request
from covid_lakehouse.defs.omop.tenants import TenantsResource
from covid_lakehouse.lib.lakehouse import LakehouseResource
from covid_lakehouse.lib.s3 import LakeS3Resource


def daily_requests(instance: dg.DagsterInstance, day: date, tenants: TenantsResource, s3: LakeS3Resource,
                   lakehouse: LakehouseResource, log: logging.Logger | logging.LoggerAdapter) -> list[dg.RunRequest]:
    """The runs of one daily tick: one per registered tenant whose sources changed; each unchanged
    tenant's "no change" observations are reported to the instance instead."""
    requests = []
    names = instance.get_dynamic_partitions(TENANT_PARTITIONS_NAME)
    for decision in gate_tenants(instance, names, tenants, s3.cached_client(), lakehouse):
        if decision.unchanged:
            # Schedules cannot return asset events: report them directly (runless, as a sensor's are).
            for observation in decision.observations:
                instance.report_runless_asset_event(observation)
            continue
        log.info("tenant %s: %s", decision.tenant, decision.reason)
        requests.append(tenant_run_request(decision.tenant, run_key=f"daily:{decision.tenant}:{day.isoformat()}",
                                           reason=f"daily: {decision.reason}"))
    return requests


@dg.schedule(name="omop_daily", cron_schedule="0 5 * * *", execution_timezone="UTC", job=omop_tenant_job,
             default_status=dg.DefaultScheduleStatus.RUNNING,
             description="05:00 UTC: one run per tenant partition whose sources changed since its last publish "
                         "(each tenant separately, so one tenant's failure never blocks another); an unchanged "
                         "tenant gets a 'no change' observation instead (a run launched by hand still checks).")
def omop_daily(context: dg.ScheduleEvaluationContext, omop_tenants: TenantsResource, s3: LakeS3Resource,
               lakehouse: LakehouseResource):
    names = context.instance.get_dynamic_partitions(TENANT_PARTITIONS_NAME)
    if not names:
        return dg.SkipReason("no tenant registered yet (the omop_tenants sensor registers them)")
    requests = daily_requests(context.instance, context.scheduled_execution_time.date(), omop_tenants, s3,
                              lakehouse, context.log)
    return requests or dg.SkipReason(f"all {len(names)} tenant(s) unchanged since their last publish")
