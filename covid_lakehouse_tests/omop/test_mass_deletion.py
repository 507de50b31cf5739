"""A run that finds most of a tenant's source providers gone (a table emptied by mistake, a reload
half done, a schema pointed at the wrong place) publishes nothing until an operator confirms it with
the run config ``allow_mass_deletion: true``; fewer deletions publish as before. Real PostgreSQL and S3."""

import pytest

from covid_lakehouse.defs.omop import tables
from covid_lakehouse.defs.omop.checks import MAX_DELETED_SHARE
from covid_lakehouse_tests.omop.support import execute_on_provider, provider_metadata, published, run_tenant

pytestmark = pytest.mark.integration

ALLOW = {"ops": {"omop__landing_files": {"config": {"allow_mass_deletion": True}}}}
CHECK = "source_deletions_bounded"
STATE = (tables.T_PROVIDER, tables.T_PROVENANCE, tables.T_QUARANTINE, tables.T_FLAG, tables.T_RUN_LOG)


def _check(result) -> tuple[bool, dict]:
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.check_name == CHECK]
    return evaluation.passed, {k: v.value for k, v in evaluation.metadata.items()}


def _snapshots(lakehouse, ns) -> dict:
    return {t: lakehouse.load_table(ns, t).current_snapshot().snapshot_id for t in STATE}


def test_a_source_emptied_by_mistake_publishes_nothing_until_a_run_allows_it(make_tenants, lakehouse, instance, pg):
    env = make_tenants(providers=80)
    tenant, ns = env.tenant, env.tenant.namespace
    assert run_tenant(env, tenant, instance).success
    before, snapshots = published(lakehouse, ns), _snapshots(lakehouse, ns)

    execute_on_provider(pg, tenant, "DELETE FROM {t}")
    stopped = run_tenant(env, tenant, instance, raise_on_error=False)
    assert not stopped.success
    passed, figures = _check(stopped)
    assert not passed and figures["deleted"] == figures["previous_source_rows"] == 80 and figures["share"] == 1.0
    message = stopped.failure_data_for_node("omop_provider").error.message
    assert "80 of 80 source providers" in message and "allow_mass_deletion: true" in message
    assert "nothing published" in message
    # every published table as it was, and no run recorded (the next run is not skipped)
    assert _snapshots(lakehouse, ns) == snapshots and published(lakehouse, ns) == before

    stopped_again = run_tenant(env, tenant, instance, raise_on_error=False)
    assert not stopped_again.success and not _check(stopped_again)[0]

    confirmed = run_tenant(env, tenant, instance, run_config=ALLOW)
    assert confirmed.success and _check(confirmed)[0]
    assert provider_metadata(confirmed)["source_deleted"] == 80
    assert lakehouse.read(ns, tables.T_PROVIDER).num_rows == 0
    statuses = set(lakehouse.read(ns, tables.T_PROVENANCE)["status"].to_pylist())
    assert statuses == {"deleted"}


def test_deletions_within_the_share_publish_and_report_it(make_tenants, lakehouse, instance, pg):
    env = make_tenants(providers=80)
    tenant = env.tenant
    assert run_tenant(env, tenant, instance).success
    execute_on_provider(pg, tenant, "DELETE FROM {t} WHERE provider_id <= 40")  # half: the limit, not over it
    result = run_tenant(env, tenant, instance)
    passed, figures = _check(result)
    assert passed and (figures["deleted"], figures["previous_source_rows"], figures["share"]) == (40, 80, 0.5)
    assert provider_metadata(result)["source_deleted"] == 40


def test_the_share_is_a_setting_and_a_bad_value_fails_the_check_naming_it(make_tenants, lakehouse, instance, pg,
                                                                        monkeypatch):
    env = make_tenants(providers=40)
    tenant = env.tenant
    assert run_tenant(env, tenant, instance).success
    execute_on_provider(pg, tenant, "DELETE FROM {t} WHERE provider_id <= 10")  # a quarter
    monkeypatch.setenv(MAX_DELETED_SHARE.name, "1.5")
    bad = run_tenant(env, tenant, instance, raise_on_error=False)
    assert not bad.success and not _check(bad)[0]
    assert MAX_DELETED_SHARE.name in bad.failure_data_for_node("omop_provider").error.message

    monkeypatch.setenv(MAX_DELETED_SHARE.name, "0.2")  # a quarter is over a fifth
    assert not run_tenant(env, tenant, instance, raise_on_error=False).success
    monkeypatch.setenv(MAX_DELETED_SHARE.name, "1")  # never stopped
    assert run_tenant(env, tenant, instance).success
