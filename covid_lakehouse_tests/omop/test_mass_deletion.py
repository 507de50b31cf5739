"""A run that finds most of a tenant's source providers gone (a table emptied by mistake, a reload
half done, a schema pointed at the wrong place) publishes nothing until an operator confirms the count
with the run config ``allow_deleted_providers: n`` (n exactly the number gone: a confirmation is bounded);
fewer deletions publish as before. Real PostgreSQL and S3."""

import dagster as dg
import pytest

from covid_lakehouse.defs.omop import tables
from covid_lakehouse.defs.omop.assets import LANDING_KEY, landing_files
from covid_lakehouse.defs.omop.checks import MAX_DELETED_SHARE, provider_audits
from covid_lakehouse.defs.omop.partitions import TENANT_PARTITIONS_NAME
from covid_lakehouse.defs.omop.transform import Reconciliation
from covid_lakehouse_tests.omop.support import (
    TENANTS_FILE_ENV,
    execute_on_provider,
    gate_config,
    provider_metadata,
    published,
    run_tenant,
    tenant_job,
)

pytestmark = pytest.mark.integration

CHECK = "source_deletions_bounded"
STATE = (tables.T_PROVIDER, tables.T_PROVENANCE, tables.T_QUARANTINE, tables.T_FLAG, tables.T_RUN_LOG)


def allow(deleted: int) -> dict:
    """Run config confirming exactly ``deleted`` providers gone."""
    return gate_config(allow_deleted_providers=deleted)


def _check(result) -> tuple[bool, dict]:
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.check_name == CHECK]
    return evaluation.passed, {k: v.value for k, v in evaluation.metadata.items()}


def _audit(counts: Reconciliation, **kwargs):
    """The source_deletions_bounded audit of a provider step's counts."""
    [audit] = [a for a in provider_audits(counts, (), (), **kwargs) if a.name == CHECK]
    return audit


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
    published_before = before[tables.T_PROVIDER].num_rows  # no files: one provider per published source row
    assert not passed and figures["deleted"] == figures["previously_published"] and figures["share"] == 1.0
    assert figures["previously_published"] == published_before > 0
    message = stopped.failure_data_for_node("omop_provider").error.message
    assert f"{published_before} of the {published_before} source providers" in message
    # the hint names the gate's op as Dagster names it, where run_flags reads the confirmation
    assert f"ops.{landing_files.op.name}.config.allow_deleted_providers: {published_before}" in message
    assert "not published" in message
    # every published table as it was, and no run recorded (the next run is not skipped)
    assert _snapshots(lakehouse, ns) == snapshots and published(lakehouse, ns) == before

    stopped_again = run_tenant(env, tenant, instance, raise_on_error=False)
    assert not stopped_again.success and not _check(stopped_again)[0]

    # a count other than the one gone confirms nothing (a backfill's config is no blanket yes)
    for wrong in (published_before - 1, published_before + 1):
        unconfirmed = run_tenant(env, tenant, instance, raise_on_error=False, run_config=allow(wrong))
        assert not unconfirmed.success and not _check(unconfirmed)[0]
        assert f"this run confirmed {wrong}" in unconfirmed.failure_data_for_node("omop_provider").error.message
        assert _snapshots(lakehouse, ns) == snapshots

    confirmed = run_tenant(env, tenant, instance, run_config=allow(published_before))
    assert confirmed.success and _check(confirmed)[0]
    assert provider_metadata(confirmed)["source_deleted"] == 80  # the quarantined (nameless) ones too
    assert lakehouse.read(ns, tables.T_PROVIDER).num_rows == 0
    statuses = set(lakehouse.read(ns, tables.T_PROVENANCE)["status"].to_pylist())
    assert statuses == {"deleted"}


def test_deletions_within_the_share_publish_and_report_it(make_tenants, lakehouse, instance, pg):
    env = make_tenants(providers=80, dirt_rate=0)  # every row published
    tenant = env.tenant
    assert run_tenant(env, tenant, instance).success
    execute_on_provider(pg, tenant, "DELETE FROM {t} WHERE provider_id <= 40")  # half: the limit, not over it
    result = run_tenant(env, tenant, instance)
    passed, figures = _check(result)
    assert passed and (figures["deleted"], figures["previously_published"], figures["share"]) == (40, 80, 0.5)
    assert provider_metadata(result)["source_deleted"] == 40


def test_the_share_is_of_the_providers_the_last_run_published_not_of_rows_that_came_back(
        make_tenants, lakehouse, instance, pg):
    """Rows deleted (confirmed) and later restored count as changed, not as published by the last run:
    with them in the base, a run removing every live provider measured 10 of 100."""
    env = make_tenants(providers=100, dirt_rate=0)
    tenant = env.tenant
    assert run_tenant(env, tenant, instance).success
    execute_on_provider(pg, tenant, "CREATE TEMP TABLE backup AS SELECT * FROM {t} WHERE provider_id > 10")
    execute_on_provider(pg, tenant, "DELETE FROM {t} WHERE provider_id > 10")
    assert run_tenant(env, tenant, instance, run_config=allow(90)).success  # 90 gone, confirmed
    execute_on_provider(pg, tenant, "INSERT INTO {t} SELECT * FROM backup; DROP TABLE backup")  # a stale backup
    execute_on_provider(pg, tenant, "DELETE FROM {t} WHERE provider_id <= 10")  # and the 10 live ones gone
    stopped = run_tenant(env, tenant, instance, raise_on_error=False)
    assert not stopped.success
    passed, figures = _check(stopped)
    assert not passed and (figures["deleted"], figures["previously_published"]) == (10, 10)


def test_removing_rows_the_last_run_quarantined_is_not_a_mass_deletion(make_tenants, lakehouse, instance, pg):
    env = make_tenants(providers=20, dirt_rate=0)
    tenant = env.tenant
    execute_on_provider(pg, tenant, "UPDATE {t} SET provider_name = '  ' WHERE provider_id > 4")  # 16 nameless
    assert run_tenant(env, tenant, instance).success
    execute_on_provider(pg, tenant, "DELETE FROM {t} WHERE provider_id > 4")
    result = run_tenant(env, tenant, instance)
    passed, figures = _check(result)
    assert passed and (figures["deleted"], figures["previously_published"]) == (0, 4)
    assert provider_metadata(result)["source_deleted"] == 16


def test_the_share_is_a_setting_and_a_bad_value_fails_the_step_naming_it(make_tenants, lakehouse, instance, pg,
                                                                        monkeypatch):
    env = make_tenants(providers=40, dirt_rate=0)
    tenant = env.tenant
    assert run_tenant(env, tenant, instance).success
    execute_on_provider(pg, tenant, "DELETE FROM {t} WHERE provider_id <= 10")  # a quarter
    monkeypatch.setenv(MAX_DELETED_SHARE.name, "1.5")
    bad = run_tenant(env, tenant, instance, raise_on_error=False)
    # refused as the step starts, before the extract: no check ran
    assert not bad.success and not [e for e in bad.get_asset_check_evaluations() if e.check_name == CHECK]
    assert f"{MAX_DELETED_SHARE.name} must be at most 1, got 1.5" in bad.failure_data_for_node("omop_provider").error.message

    monkeypatch.setenv(MAX_DELETED_SHARE.name, "0.2")  # a quarter is over a fifth
    assert not run_tenant(env, tenant, instance, raise_on_error=False).success
    monkeypatch.setenv(MAX_DELETED_SHARE.name, "1")  # never stopped
    assert run_tenant(env, tenant, instance).success


def test_the_audit_judges_by_the_share_the_step_validated_not_by_reading_the_setting_again(monkeypatch):
    monkeypatch.setenv(MAX_DELETED_SHARE.name, "1")  # never stopped, were it read again
    counts = Reconciliation(source_previously_published=10, source_published_gone=3)
    result = _audit(counts, max_share=0.2).fn([])
    assert not result.passed and result.metadata["max_share"] == 0.2


@pytest.mark.parametrize(("allowed", "passes"), [(0, False), (2, False), (3, True), (4, False), (30, False)])
def test_a_confirmation_covers_exactly_the_deletions_it_names(allowed, passes):
    """One count in a backfill's config must not confirm a tenant that lost fewer (a small tenant wiped)."""
    counts = Reconciliation(source_previously_published=10, source_published_gone=3)  # 30%, over a fifth
    result = _audit(counts, max_share=0.2, allow_deleted_providers=allowed).fn([])
    assert (result.passed, result.metadata["allow_deleted_providers"]) == (passes, allowed)


def test_a_reexecution_from_failure_keeps_the_runs_confirmation(make_tenants, lakehouse, pg, monkeypatch):
    """The confirmation is read from the run's config, which a re-execution carries over; the gate (and its
    metadata) is not part of a re-execution of the provider step. Between the confirmed run and its
    re-execution, a run without the confirmation is blocked: the partition's latest gate materialization
    then confirms nothing, so the re-execution publishes only if it reads its own run's config."""
    env = make_tenants(providers=40, dirt_rate=0)
    tenant, ns = env.tenant, env.tenant.namespace
    monkeypatch.setenv(TENANTS_FILE_ENV, str(env.path))
    job = dg.reconstructable(tenant_job)
    in_process = {"execution": {"config": {"in_process": {}}}}
    run = {"tags": {"dagster/partition": tenant.name}}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(TENANT_PARTITIONS_NAME, [tenant.name])
        assert dg.execute_job(job, instance, run_config=in_process, **run).success
        execute_on_provider(pg, tenant, "DELETE FROM {t}")
        monkeypatch.setenv(MAX_DELETED_SHARE.name, "1.5")  # fails the provider step as it starts
        failed = dg.execute_job(job, instance, run_config={**in_process, **allow(40)}, **run)
        assert not failed.success
        monkeypatch.delenv(MAX_DELETED_SHARE.name)
        # a run launched meanwhile without the confirmation: its gate materializes the partition last
        blocked = dg.execute_job(job, instance, run_config=in_process, **run)
        assert not blocked.success and not _check(blocked)[0]
        latest = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=LANDING_KEY, asset_partitions=[tenant.name]), limit=1).records[0]
        assert latest.run_id == blocked.run_id
        assert latest.asset_materialization.metadata["allow_deleted_providers"].value == 0
        assert lakehouse.read(ns, tables.T_PROVIDER).num_rows == 40  # nothing published yet
        # as the UI's "re-execute from failure" launches it: the parent's config and tags, its failed steps
        parent = instance.get_run_by_id(failed.run_id)
        again = dg.execute_job(job, instance, run_config=parent.run_config, tags=parent.tags,
                               reexecution_options=dg.ReexecutionOptions.from_failure(failed.run_id, instance))
        assert again.success and _check(again)[0]
        steps = {e.step_key for e in again.all_events if e.is_step_success}
        assert steps == {"omop_provider"}  # the gate did not run again
    assert lakehouse.read(ns, tables.T_PROVIDER).num_rows == 0  # the 40 deletions confirmed and published
