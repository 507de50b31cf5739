"""Two sensors: one keeps the omop_tenants partitions in sync with the tenants file, one turns each new
landing object into a run of its tenant's partition, exactly once (cursor: last-modified + key)."""

import json
from dataclasses import dataclass, field
from datetime import datetime

import dagster as dg
from botocore.exceptions import BotoCoreError, ClientError

from covid_lakehouse.defs.omop.assets import TENANT_ASSET_KEYS
from covid_lakehouse.defs.omop.gate import evaluate
from covid_lakehouse.defs.omop.landing import LandingObject, list_landing
from covid_lakehouse.defs.omop.partitions import TENANT_PARTITIONS_NAME, tenant_partitions
from covid_lakehouse.defs.omop.tenants import TENANTS_FILE_ENV, TenantConfigError, TenantsResource
from covid_lakehouse.lib.lakehouse import LakehouseResource
from covid_lakehouse.lib.policies import max_runtime
from covid_lakehouse.lib.s3 import LakeS3Resource

# Runs of one tenant should queue behind each other: the run queue limits runs per value of these
# tags (pool: one at a time in dagster.yaml; tenant: per data partner in the deployments). Other
# tenants run alongside. Overlapping runs stay correct (see transform/ids.py), only wasteful.
TENANT_POOL_TAG = "covid_lakehouse/pool"
TENANT_TAG = "covid_lakehouse/tenant"

omop_tenant_job = dg.define_asset_job(
    "omop_tenant_job", selection=TENANT_ASSET_KEYS, partitions_def=tenant_partitions,
    tags=max_runtime(hours=3), description="One tenant: new landing files, care_site, provider (+ provenance, quarantine, flags).",
)


def tenant_run_request(tenant: str, *, run_key: str | None, reason: str) -> dg.RunRequest:
    return dg.RunRequest(run_key=run_key, partition_key=tenant, asset_selection=TENANT_ASSET_KEYS,
                         tags={TENANT_POOL_TAG: f"omop:{tenant}", TENANT_TAG: tenant, "omop/trigger": reason})


@dg.sensor(name="omop_tenants", job=omop_tenant_job, minimum_interval_seconds=60,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description=f"Keeps the {TENANT_PARTITIONS_NAME} partitions equal to the tenants file (adds new tenants "
                       "and runs them once, removes dropped ones; their lakehouse tables are kept).")
def omop_tenants_sensor(context: dg.SensorEvaluationContext,
                        omop_tenants: TenantsResource) -> dg.SensorResult | dg.SkipReason:
    if omop_tenants.path() is None:  # unconfigured is not "no tenants": registered partitions stay
        return dg.SkipReason(f"{TENANTS_FILE_ENV} is not set: no tenants file to follow")
    try:
        wanted = [t.name for t in omop_tenants.load()]
    except TenantConfigError as err:  # a broken file changes nothing; the tick shows why
        raise dg.Failure(description=str(err)) from err
    existing = set(context.instance.get_dynamic_partitions(TENANT_PARTITIONS_NAME))
    added = [name for name in wanted if name not in existing]
    removed = sorted(existing - set(wanted))
    if added:
        context.log.info("adding tenant partition(s): %s", ", ".join(added))
    if removed:
        context.log.warning("removing tenant partition(s) no longer in the tenants file: %s", ", ".join(removed))
    requests = [tenant_partitions.build_add_request(added)] if added else []
    requests += [tenant_partitions.build_delete_request(removed)] if removed else []
    return dg.SensorResult(
        dynamic_partitions_requests=requests,
        run_requests=[tenant_run_request(name, run_key=f"tenant-added:{name}", reason="tenant added")
                      for name in added],
    )


@dataclass
class LandingCursor:
    """Per tenant, the newest last-modified second handled and the keys seen at that second (S3
    timestamps have one-second resolution: a later object may share the second of an earlier one)."""

    tenants: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: str | None) -> "LandingCursor":
        return cls(json.loads(raw) if raw else {})

    def dump(self) -> str:
        return json.dumps(self.tenants, sort_keys=True)

    def new_objects(self, tenant: str, objects: list[LandingObject]) -> list[LandingObject]:
        mark = self.tenants.get(tenant)
        if not mark:
            return list(objects)
        last = datetime.fromisoformat(mark["last_modified"])
        seen = set(mark["keys"])
        return [o for o in objects if o.last_modified > last or (o.last_modified == last and o.key not in seen)]

    def advance(self, tenant: str, new: list[LandingObject]) -> None:
        if not new:
            return
        newest = max(o.last_modified for o in new)
        mark = self.tenants.get(tenant)
        keys = set(mark["keys"]) if mark and datetime.fromisoformat(mark["last_modified"]) == newest else set()
        keys |= {o.key for o in new if o.last_modified == newest}
        self.tenants[tenant] = {"last_modified": newest.isoformat(), "keys": sorted(keys)}


@dg.sensor(name="omop_landing_files", job=omop_tenant_job, minimum_interval_seconds=60,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Requests a run of a tenant's partition when new objects land under its prefix; each "
                       "object is picked up once. A tenant whose listing fails is skipped, the others go on.")
def omop_landing_sensor(context: dg.SensorEvaluationContext, omop_tenants: TenantsResource,
                        s3: LakeS3Resource, lakehouse: LakehouseResource) -> dg.SensorResult:
    try:
        tenants = omop_tenants.load()
    except TenantConfigError as err:
        raise dg.Failure(description=str(err)) from err
    registered = set(context.instance.get_dynamic_partitions(TENANT_PARTITIONS_NAME))
    cursor = LandingCursor.parse(context.cursor)
    client = s3.cached_client()
    requests, observations = [], []
    for tenant in tenants:
        if tenant.name not in registered:  # the tenants sensor adds it (and runs it) first
            continue
        try:
            objects = list_landing(client, tenant.landing_bucket, tenant.prefix)
        except (ClientError, BotoCoreError) as err:
            context.log.warning("tenant %s: cannot list s3://%s/%s: %s", tenant.name, tenant.landing_bucket,
                                tenant.prefix, err)
            continue
        new = cursor.new_objects(tenant.name, objects)
        if not new:
            continue
        newest = max(new, key=lambda o: o.order)
        cursor.advance(tenant.name, new)
        # New to this sensor, but perhaps already published by another run (the daily one, or the run
        # that registered the tenant): the gate sees that from the recorded source signal.
        decision = evaluate(context.instance, tenant, client, lakehouse, objects=objects)
        if decision.unchanged:
            context.log.info("tenant %s: %d new object(s), already published: no run", tenant.name, len(new))
            observations += decision.observations
            continue
        context.log.info("tenant %s: %d new object(s), newest %s", tenant.name, len(new), newest.key)
        requests.append(tenant_run_request(
            tenant.name, run_key=f"landing:{tenant.name}:{newest.last_modified.isoformat()}:{newest.key}",
            reason=f"{len(new)} new file(s)"))
    return dg.SensorResult(run_requests=requests, asset_events=observations, cursor=cursor.dump())
