"""A tenant run stages the writes of a step side by side (each write waits on S3: most of a tenant's
fixed cost) and still commits them in the order the pipeline relies on: landing rows before the
landing manifest, the care_site id map before care_site, the run_log row after every output. A commit
that fails leaves the tables staged beside it uncommitted."""

import threading

import dagster as dg
import pytest

from covid_lakehouse.defs.omop import tables
from covid_lakehouse.lib.lakehouse import LakehouseResource
from covid_lakehouse_tests.omop.support import (
    SAMPLE_CSV,
    drop_file,
    execute_on_provider,
    fail_commits,
    normalized,
    run_tenant,
)

pytestmark = pytest.mark.integration

# How long a staged write waits for its partner before the test records that they did not overlap.
# The barriers, not this, order the writes: it only bounds the wait when they run one after the other.
PARTNER_WAIT_S = 30
# Writes that must be staged at the same time: each waits in its transaction for the other.
PARTNERS = [(tables.T_LANDING_ROW, tables.T_LANDING_FILE), (tables.T_CARE_SITE_ID_MAP, tables.T_CARE_SITE),
            (tables.T_RUN_LOG, tables.T_FLAG)]


def test_a_steps_writes_are_staged_side_by_side_and_committed_in_order(make_tenants, s3, lakehouse, monkeypatch):
    env = make_tenants(1)
    tenant = env.tenant
    drop_file(s3, tenant, "d1/sample.csv", SAMPLE_CSV)
    barriers = {table: threading.Barrier(2, timeout=PARTNER_WAIT_S) for pair in PARTNERS for table in pair}
    for left, right in PARTNERS:
        barriers[right] = barriers[left]
    overlapped, commits = set(), []
    real_transaction, real_commit = LakehouseResource._transaction, LakehouseResource._commit

    def transaction_meeting_its_partner(self, namespace, table, *args, **kwargs):
        if namespace == tenant.namespace and table in barriers:
            try:
                barriers.pop(table).wait()  # only the first write of each table waits
                overlapped.add(table)
            except threading.BrokenBarrierError:
                pass  # its partner was not being staged meanwhile: asserted below
        return real_transaction(self, namespace, table, *args, **kwargs)

    def recorded_commit(self, tx, namespace, table, *args, **kwargs):
        committed = real_commit(self, tx, namespace, table, *args, **kwargs)
        commits.append(table)
        return committed

    monkeypatch.setattr(LakehouseResource, "_transaction", transaction_meeting_its_partner)
    monkeypatch.setattr(LakehouseResource, "_commit", recorded_commit)
    with dg.DagsterInstance.ephemeral() as instance:
        assert run_tenant(env, tenant, instance).success
    assert overlapped == {table for pair in PARTNERS for table in pair}
    assert commits.index(tables.T_LANDING_ROW) < commits.index(tables.T_LANDING_FILE)
    assert commits.index(tables.T_CARE_SITE_ID_MAP) < commits.index(tables.T_CARE_SITE)
    assert commits[-1] == tables.T_RUN_LOG and commits.count(tables.T_RUN_LOG) == 1


@pytest.mark.parametrize(("failing", "not_committed"), [
    (tables.T_LANDING_ROW, tables.T_LANDING_FILE),  # the manifest never names rows that are not committed
    (tables.T_CARE_SITE_ID_MAP, tables.T_CARE_SITE),  # ids are reserved before anything publishes them
])
def test_a_failed_commit_leaves_the_table_staged_beside_it_uncommitted(make_tenants, s3, lakehouse, monkeypatch,
                                                                      failing, not_committed):
    """The table after the failing one was already staged (its files written) when the commit failed:
    the commit order, not the order of the writes, keeps it unpublished. Written one after the other
    (the code before staging), it would never have been staged: the first assertion tells them apart."""
    env = make_tenants(1)
    tenant = env.tenant
    drop_file(s3, tenant, "d1/sample.csv", SAMPLE_CSV)
    partner_staged, staged_when_failed = threading.Event(), []
    real_stage = LakehouseResource.stage

    def recorded_stage(self, namespace, table, *args, **kwargs):
        staged = real_stage(self, namespace, table, *args, **kwargs)
        if namespace == tenant.namespace and table == not_committed:
            partner_staged.set()
        return staged

    monkeypatch.setattr(LakehouseResource, "stage", recorded_stage)
    # care_site may still be staging in its thread: wait for it (bounded), then fail
    fail_commits(monkeypatch, tenant.namespace, failing,
                 before_failing=lambda table: staged_when_failed.append(partner_staged.wait(PARTNER_WAIT_S)))
    with dg.DagsterInstance.ephemeral() as instance:
        assert not run_tenant(env, tenant, instance, raise_on_error=False).success
    assert staged_when_failed == [True]
    assert not lakehouse.table_exists(tenant.namespace, failing)
    assert not lakehouse.table_exists(tenant.namespace, not_committed)


def test_rows_committed_without_their_manifest_are_taken_in_again_and_publish_what_a_clean_run_does(
        make_tenants, s3, lakehouse):
    """landing_row commits, then landing_file fails to: the next run finds the file missing from the
    manifest and appends its rows again; the transform drops the repeated (file, line) rows."""
    env = make_tenants(2, providers=60)  # same seed: identical sources
    retried, clean = env.tenants
    for tenant in env.tenants:
        drop_file(s3, tenant, "d1/sample.csv", SAMPLE_CSV)
    with dg.DagsterInstance.ephemeral() as instance:
        assert run_tenant(env, clean, instance).success
        with pytest.MonkeyPatch.context() as failing:
            fail_commits(failing, retried.namespace, tables.T_LANDING_FILE)
            assert not run_tenant(env, retried, instance, raise_on_error=False).success
        once = lakehouse.read(clean.namespace, tables.T_LANDING_ROW).num_rows
        assert lakehouse.read(retried.namespace, tables.T_LANDING_ROW).num_rows == once > 0
        assert not lakehouse.table_exists(retried.namespace, tables.T_LANDING_FILE)
        assert run_tenant(env, retried, instance).success
    assert lakehouse.read(retried.namespace, tables.T_LANDING_ROW).num_rows == 2 * once  # the file taken in twice
    assert lakehouse.read(retried.namespace, tables.T_LANDING_FILE).num_rows == 1
    assert normalized(lakehouse, retried) == normalized(lakehouse, clean)


def test_a_companion_that_fails_to_publish_leaves_the_run_unrecorded_and_the_next_run_not_skipped(
        make_tenants, s3, lakehouse, pg):
    """run_log is staged while the companions publish: its commit must still wait for every one of them,
    or the gate would skip the next run over outputs that never all committed."""
    env = make_tenants(1, providers=30)
    tenant, ns = env.tenant, env.tenant.namespace
    with dg.DagsterInstance.ephemeral() as instance:
        assert run_tenant(env, tenant, instance).success
        recorded = lakehouse.load_table(ns, tables.T_RUN_LOG).current_snapshot().snapshot_id
        # statistics flushed: the gate must see the change now (its counters lag the writer up to a second)
        execute_on_provider(pg, tenant, "UPDATE {t} SET provider_name = 'Ada Byron' WHERE provider_id = 2")
        with pytest.MonkeyPatch.context() as failing:
            fail_commits(failing, ns, tables.T_FLAG)
            assert not run_tenant(env, tenant, instance, raise_on_error=False).success
        assert lakehouse.load_table(ns, tables.T_RUN_LOG).current_snapshot().snapshot_id == recorded
        again = run_tenant(env, tenant, instance)
        assert again.success
        assert tables.T_PROVIDER in {e.asset_key.path[-1] for e in again.get_asset_materialization_events()}
        assert lakehouse.load_table(ns, tables.T_RUN_LOG).current_snapshot().snapshot_id != recorded


def test_every_companion_that_fails_to_publish_is_reported(make_tenants, s3, lakehouse, monkeypatch):
    """The companions publish side by side: a failure of each (and of the run_log staging beside them) is
    in the step's error, not only the first; one that must not be retried is the one raised (a retry
    would redo the extract and the transform to meet it again)."""
    env = make_tenants(1, providers=30)
    ns = env.tenant.namespace
    real_stage = LakehouseResource.stage
    failing = (tables.T_PROVENANCE, tables.T_QUARANTINE, tables.T_FLAG)
    # retryable, and listed before run_log: its non-retryable failure must still be the one raised
    fail_commits(monkeypatch, ns, *failing, allow_retries=True)
    run_log_stagings = []

    def run_log_fails(self, namespace, table, *args, **kwargs):
        if namespace == ns and table == tables.T_RUN_LOG:
            run_log_stagings.append(table)
            raise dg.Failure(description="staging of run_log failed (test)", allow_retries=False)
        return real_stage(self, namespace, table, *args, **kwargs)

    monkeypatch.setattr(LakehouseResource, "stage", run_log_fails)
    with dg.DagsterInstance.ephemeral() as instance:
        result = run_tenant(env, env.tenant, instance, raise_on_error=False)
    assert not result.success
    error = result.failure_data_for_node("omop_provider").error
    message = error.message + "".join(str(cause) for cause in (error.cause,) if cause)
    assert all(f"commit of {table} failed (test)" in message for table in failing), message
    assert "staging of run_log failed (test)" in message, message
    assert len(run_log_stagings) == 1  # not retried: the non-retryable failure was the one raised
