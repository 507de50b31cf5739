"""The gate before launch: the daily schedule and the landing sensor read each tenant's cheap source
signal and request a run only for a tenant whose sources changed since its last publish; an unchanged
tenant gets a "no change" observation and no run. A changed source is never held back. Real
PostgreSQL, S3, Iceberg catalog and Dagster instance."""

from datetime import UTC, datetime

import dagster as dg
import pytest
from psycopg import sql

from covid_lakehouse.defs.omop import tables
from covid_lakehouse.defs.omop.assets import CARE_SITE_KEY, LANDING_KEY, PROVIDER_KEY
from covid_lakehouse.defs.omop.partitions import TENANT_PARTITIONS_NAME
from covid_lakehouse.defs.omop.schedules import omop_daily
from covid_lakehouse.defs.omop.sensors import LandingCursor, omop_landing_sensor
from covid_lakehouse_tests.omop.support import CHANGES, SAMPLE_CSV, drop_file, run_tenant

pytestmark = pytest.mark.integration


@pytest.fixture
def instance():
    """A persistent instance: a schedule's context needs one (the daemon's is)."""
    with dg.instance_for_test() as persistent:
        yield persistent


def _tick(env, instance, s3, lakehouse) -> dict:
    """One daily tick: {tenant: trigger tag} of the runs it requests."""
    # Entered, so the instance the context opens from the ref is closed in order when it ends.
    with dg.build_schedule_context(
            instance=instance, scheduled_execution_time=datetime(2026, 5, 2, 5, tzinfo=UTC),
            resources={"omop_tenants": env.resource, "s3": s3, "lakehouse": lakehouse}) as context:
        result = omop_daily(context)
    if isinstance(result, dg.SkipReason):
        return {}
    return {r.partition_key: r.tags["omop/trigger"] for r in result}


def _no_change_observations(instance, tenant: str) -> list[dict]:
    records = instance.fetch_observations(dg.AssetRecordsFilter(asset_key=PROVIDER_KEY, asset_partitions=[tenant]),
                                          limit=100).records
    observed = [{k: v.value for k, v in r.asset_observation.metadata.items()} for r in records]
    return [o for o in observed if o.get("checked_by") == "tick"]


def test_the_daily_tick_runs_only_tenants_whose_sources_changed(make_tenants, s3, lakehouse, instance, pg):
    env = make_tenants(2, providers=100)
    a, b = env.tenants
    drop_file(s3, a, "d1/sample.csv", SAMPLE_CSV)
    instance.add_dynamic_partitions(TENANT_PARTITIONS_NAME, [a.name, b.name])
    # Never published: no recorded signal, both run.
    assert set(_tick(env, instance, s3, lakehouse)) == {a.name, b.name}
    first = {t.name: run_tenant(env, t, instance) for t in env.tenants}

    assert _tick(env, instance, s3, lakehouse) == {}  # nothing changed: no run at all
    [seen] = _no_change_observations(instance, b.name)
    assert seen["no_change"] is True and seen["published_by_run"] == first[b.name].run_id
    assert (seen["providers"], seen["landing_objects"]) == (lakehouse.read(b.namespace, tables.T_PROVIDER).num_rows, 0)
    assert len(_no_change_observations(instance, a.name)) == 1

    for name, change in CHANGES.items():
        change(pg, s3, a)
        assert _tick(env, instance, s3, lakehouse) == {a.name: "daily: source signal moved"}, name
        assert run_tenant(env, a, instance).success
        assert _tick(env, instance, s3, lakehouse) == {}, f"{name}: unchanged after its run, yet requested"


def test_a_tenant_republished_in_part_or_unreadable_is_run_not_held_back(make_tenants, s3, lakehouse, instance,
                                                                        pg):
    env = make_tenants(3, providers=50)
    partial, broken, fine = env.tenants
    for tenant in env.tenants:
        assert run_tenant(env, tenant, instance).success
    assert _tick(env, instance, s3, lakehouse) == {}
    # care_site republished alone: the recorded run's outputs are no longer the latest.
    assert env.defs().resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[CARE_SITE_KEY], partition_key=partial.name).success
    # A source table gone: the gate cannot read it; the run will say why.
    pg.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(broken.source_schema, "provider")))
    requested = _tick(env, instance, s3, lakehouse)
    assert requested[partial.name] == "daily: outputs republished since the recorded run"
    assert requested[broken.name] == "daily: source counters cannot vouch for the tables"
    assert fine.name not in requested
    # A partition the tenants file no longer describes runs too (and fails there, visibly).
    instance.add_dynamic_partitions(TENANT_PARTITIONS_NAME, ["tgone"])
    assert _tick(env, instance, s3, lakehouse)["tgone"] == "daily: not in the tenants file"


def test_the_landing_sensor_holds_back_a_file_a_run_already_published(make_tenants, s3, lakehouse, instance):
    env = make_tenants(2, providers=50)
    done, waiting = env.tenants
    instance.add_dynamic_partitions(TENANT_PARTITIONS_NAME, [done.name, waiting.name])
    resources = {"omop_tenants": env.resource, "s3": s3, "lakehouse": lakehouse}
    for tenant in env.tenants:
        assert run_tenant(env, tenant, instance).success
        drop_file(s3, tenant, "d1/sample.csv", SAMPLE_CSV)
    assert run_tenant(env, done, instance).success  # the daily run took in done's file already
    result = omop_landing_sensor(dg.build_sensor_context(instance=instance, resources=resources))
    assert [r.partition_key for r in result.run_requests] == [waiting.name]
    assert [(e.asset_key, e.partition, e.metadata["no_change"].value) for e in result.asset_events] == [
        (LANDING_KEY, done.name, True), (PROVIDER_KEY, done.name, True)]
    assert set(LandingCursor.parse(result.cursor).tenants) == {done.name, waiting.name}  # each file seen once
