"""Sensors and schedule: tenants kept in sync with the tenants file, each landing object picked up once,
a daily run per tenant; and `make demo`'s procedure materializing the demo tenant end to end."""

from datetime import UTC, datetime

import dagster as dg
import pytest

from covid_lakehouse import runtime
from covid_lakehouse.defs.omop.assets import PROVIDER_KEY, TENANT_ASSET_KEYS
from covid_lakehouse.defs.omop.definitions import defs as omop_defs
from covid_lakehouse.defs.omop.partitions import TENANT_PARTITIONS_NAME
from covid_lakehouse.defs.omop.schedules import omop_daily
from covid_lakehouse.defs.omop.sensors import omop_landing_sensor, omop_tenants_sensor
from covid_lakehouse.defs.omop.tenants import Tenant, TenantsResource
from covid_lakehouse.lib.policies import rebuilt
from covid_lakehouse.lib.resources import platform_resources
from covid_lakehouse_dev.sources import omop as demo_sources
from covid_lakehouse_tests.omop.support import SAMPLE_CSV, drop_file, write_tenants

pytestmark = pytest.mark.integration


def test_tenants_sensor_adds_and_runs_new_tenants_and_removes_dropped_ones(make_tenants, instance):
    env = make_tenants(2, providers=0)
    instance.add_dynamic_partitions(TENANT_PARTITIONS_NAME, ["retired", env.tenants[0].name])
    context = dg.build_sensor_context(instance=instance, resources={"omop_tenants": env.resource})
    result = omop_tenants_sensor(context)
    added, deleted = result.dynamic_partitions_requests
    assert list(added.partition_keys) == [env.tenants[1].name] and list(deleted.partition_keys) == ["retired"]
    (request,) = result.run_requests
    assert request.partition_key == env.tenants[1].name and list(request.asset_selection) == TENANT_ASSET_KEYS
    assert request.tags["covid_lakehouse/pool"] == f"omop:{env.tenants[1].name}"  # one run per tenant at a time


def test_tenants_sensor_refuses_an_invalid_tenants_file(tmp_path, instance):
    path = tmp_path / "t.yaml"
    path.write_text("tenants:\n  - {name: 'Bad Name', source_dsn_env: X}\n")
    context = dg.build_sensor_context(instance=instance, resources={"omop_tenants": TenantsResource(
        tenants_file=str(path))})
    with pytest.raises(dg.Failure, match="not a safe SQL identifier"):
        omop_tenants_sensor(context)


def test_tenants_sensor_without_a_tenants_file_skips_and_keeps_the_partitions(monkeypatch, instance):
    monkeypatch.delenv("OMOP_TENANTS_FILE", raising=False)
    instance.add_dynamic_partitions(TENANT_PARTITIONS_NAME, ["acme"])
    context = dg.build_sensor_context(instance=instance, resources={"omop_tenants": TenantsResource()})
    result = omop_tenants_sensor(context)
    assert isinstance(result, dg.SkipReason) and "OMOP_TENANTS_FILE is not set" in result.skip_message
    assert instance.get_dynamic_partitions(TENANT_PARTITIONS_NAME) == ["acme"]


def test_landing_sensor_requests_a_run_per_tenant_with_new_objects_once(make_tenants, s3, lakehouse, instance):
    env = make_tenants(3, providers=0)
    a, b, unregistered = env.tenants
    broken = Tenant(name="nobucket", source_dsn_env="WAREHOUSE_DSN", landing_bucket="no-such-bucket")
    write_tenants(env.path, [a, b, unregistered, broken])
    instance.add_dynamic_partitions(TENANT_PARTITIONS_NAME, [a.name, b.name, broken.name])
    resources = {"omop_tenants": env.resource, "s3": s3, "lakehouse": lakehouse}

    def tick(cursor):
        return omop_landing_sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources))

    drop_file(s3, a, "day1.csv", SAMPLE_CSV)
    drop_file(s3, unregistered, "day1.csv", SAMPLE_CSV)  # not a partition yet: left for a later tick
    first = tick(None)
    assert [(r.partition_key, r.tags["omop/trigger"]) for r in first.run_requests] == [(a.name, "1 new file(s)")]
    assert tick(first.cursor).run_requests == []  # nothing new: nothing requested
    drop_file(s3, b, "day1.json", b"[]")
    drop_file(s3, a, "day2.csv", SAMPLE_CSV)
    third = tick(first.cursor)
    assert sorted(r.partition_key for r in third.run_requests) == sorted([a.name, b.name])
    assert len({r.run_key for r in [*first.run_requests, *third.run_requests]}) == 3


def test_daily_schedule_requests_one_run_per_tenant(make_tenants, s3, lakehouse):
    env = make_tenants(2, providers=0)
    alpha, beta = sorted(t.name for t in env.tenants)
    resources = {"omop_tenants": env.resource, "s3": s3, "lakehouse": lakehouse}
    with dg.instance_for_test() as instance:
        with dg.build_schedule_context(instance=instance, resources=resources) as context:
            assert isinstance(omop_daily(context), dg.SkipReason)
        instance.add_dynamic_partitions(TENANT_PARTITIONS_NAME, [alpha, beta])
        with dg.build_schedule_context(instance=instance, resources=resources,
                                       scheduled_execution_time=datetime(2024, 5, 2, 5, tzinfo=UTC)) as context:
            requests = omop_daily(context)
    # Never published: each runs (test_gate.py: an unchanged tenant does not).
    assert [(r.partition_key, r.run_key, r.tags["covid_lakehouse/pool"]) for r in requests] == [
        (alpha, f"daily:{alpha}:2024-05-02", f"omop:{alpha}"), (beta, f"daily:{beta}:2024-05-02", f"omop:{beta}")]


def test_demo_procedure_materializes_a_prepared_demo_tenant_through_the_sensors(
        services, tmp_path, s3, pg, lakehouse):
    # The demo tenant with a schema and landing prefix of its own (other tests may run the real demo).
    schema, prefix = f"omop_source_demo_{tmp_path.name[-6:].lower().replace('-', '_')}", f"omop/landing/{tmp_path.name}/"
    path = tmp_path / "tenants.yaml"
    tenant = Tenant(name=demo_sources.DEMO_TENANT, source_dsn_env="WAREHOUSE_DSN", source_schema=schema,
                    landing_prefix=prefix)
    write_tenants(path, [tenant])
    defs = rebuilt(omop_defs, resources={**platform_resources(), "omop_tenants": TenantsResource(tenants_file=str(path))})
    try:
        # What `covid-lakehouse demo`/`up` do before anything runs; a second time there is nothing to do.
        assert demo_sources.prepare_tenant(tenant, s3, providers=300) == {
            "seeded_providers": 300, "landing_file": prefix + "E4_sample_providers.csv"}
        assert demo_sources.prepare_tenant(tenant, s3, providers=300) == {}
        with dg.instance_for_test() as instance:
            report = runtime.run_demo(defs, instance)
            assert report.ok, report.runs
            assert [label for label, _ in report.runs] == ["sensor omop_tenants",
                                                           "sensor omop_providers_per_specialty"]
            assert set(report.materialized) >= {k.to_user_string() for k in TENANT_ASSET_KEYS} | {
                "omop/providers_per_specialty"}
            assert instance.get_latest_materialization_event(PROVIDER_KEY) is not None
        assert pg.execute(f'SELECT count(*) FROM "{schema}".provider').fetchone()[0] == 300
    finally:
        pg.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
