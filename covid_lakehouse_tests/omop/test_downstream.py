"""The tenants' Iceberg tables load as inputs: providers per specialty reads the tenant's published
provider table through the lakehouse IO manager (its own tenant only), is written by it into the
tenant's namespace, and follows each provider publish through its sensor."""

from __future__ import annotations

from collections import Counter

import dagster as dg
import pytest

from covid_lakehouse.defs.omop.assets import CARE_SITE_KEY, PROVIDER_KEY
from covid_lakehouse.defs.omop.specialties import SPECIALTIES_KEY
from covid_lakehouse_tests.omop.support import run_tenant

pytestmark = pytest.mark.integration


def _follow(defs: dg.Definitions, instance: dg.DagsterInstance, cursors: list[str | None]) -> list[dg.RunRequest]:
    """One tick, the cursor carried in ``cursors`` from tick to tick as the daemon does."""
    sensor = defs.resolve_sensor_def("omop_providers_per_specialty")
    result = sensor(dg.build_sensor_context(instance=instance, cursor=cursors[-1]))
    if isinstance(result, dg.SkipReason):
        return []
    cursors.append(result.cursor)
    return list(result.run_requests or [])


def test_providers_per_specialty_per_tenant_follows_the_provider_publish(make_tenants, instance, lakehouse):
    env = make_tenants(2, providers=60)
    defs = env.defs()
    for tenant in env.tenants:
        assert run_tenant(env, tenant, instance).success
    cursors: list[str | None] = [None]
    requests = _follow(defs, instance, cursors)
    assert sorted(r.partition_key for r in requests) == sorted(t.name for t in env.tenants)
    job = defs.resolve_implicit_global_asset_job_def()
    for request in requests:
        assert job.execute_in_process(instance=instance, asset_selection=list(request.asset_selection),
                                      partition_key=request.partition_key).success
    for tenant in env.tenants:
        provider = lakehouse.read(tenant.namespace, "provider")
        expected = Counter(zip(provider["specialty_concept_id"].to_pylist(),
                               provider["specialty_source_value"].to_pylist(), strict=True))
        counts = lakehouse.read(tenant.namespace, "providers_per_specialty")
        got = {(c, s): n for c, s, n in zip(counts["specialty_concept_id"].to_pylist(),
                                            counts["specialty_source_value"].to_pylist(),
                                            counts["providers"].to_pylist(), strict=True)}
        assert got == dict(expected) and sum(got.values()) == provider.num_rows
    assert _follow(defs, instance, cursors) == []  # nothing new since: nothing requested

    # Analysts load one tenant's published tables, or every tenant's with a tenant column.
    one = defs.load_asset_value(CARE_SITE_KEY, partition_key=env.tenant.name, instance=instance)
    assert set(one["tenant"]) == {env.tenant.name}
    every = defs.load_asset_value(PROVIDER_KEY, instance=instance)  # every tenant (other tests' too)
    per_tenant = every["tenant"].value_counts().to_dict()
    assert {t.name: per_tenant.get(t.name) for t in env.tenants} == {
        t.name: lakehouse.read(t.namespace, "provider").num_rows for t in env.tenants}


def test_a_failing_count_audit_leaves_the_published_counts(make_tenants, instance, lakehouse, monkeypatch):
    env = make_tenants(1, providers=30)
    defs = env.defs()
    assert run_tenant(env, env.tenant, instance).success
    job = defs.resolve_implicit_global_asset_job_def()
    assert job.execute_in_process(instance=instance, asset_selection=[SPECIALTIES_KEY],
                                  partition_key=env.tenant.name).success
    before = lakehouse.load_table(env.tenant.namespace, "providers_per_specialty").current_snapshot().snapshot_id

    from covid_lakehouse.defs.omop import specialties

    real = specialties.providers_per_specialty_table
    monkeypatch.setattr(specialties, "providers_per_specialty_table", lambda p: real(p.slice(1)))  # loses one
    result = job.execute_in_process(instance=instance, asset_selection=[SPECIALTIES_KEY],
                                    partition_key=env.tenant.name, raise_on_error=False)
    assert not result.success
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == "every_provider_counted" and not check.passed
    after = lakehouse.load_table(env.tenant.namespace, "providers_per_specialty").current_snapshot().snapshot_id
    assert after == before
