"""A tenant's partition run end to end on the real services: PostgreSQL source (COPY), landing files in
S3, DuckDB transform, Iceberg tables with write-audit-publish, checks, ids stable across runs."""

import dataclasses

import dagster as dg
import pyarrow as pa
import pytest
from psycopg import sql

from covid_lakehouse.defs.omop import assets, checks, tables
from covid_lakehouse.defs.omop.assets import LANDING_KEY, PROVIDER_KEY, QUARANTINE_KEY, run_flags
from covid_lakehouse.lib.lakehouse import LakehouseResource
from covid_lakehouse.lib.settings import WAREHOUSE_DSN
from covid_lakehouse_tests.omop.support import (
    FULL_REFRESH,
    SAMPLE_CSV,
    drop_file,
    gate_config,
    rows_by,
    run_tenant,
)
from covid_lakehouse_tests.platform.support import another_catalog

pytestmark = pytest.mark.integration


def _metadata(result, key) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_a_tenant_run_publishes_omop_tables_and_reruns_keep_ids(make_tenants, s3, lakehouse, instance):
    env = make_tenants(providers=200)
    tenant, ns = env.tenant, env.tenant.namespace
    key = drop_file(s3, tenant, "2024-05-01/E4_sample_providers.csv", SAMPLE_CSV)

    first = run_tenant(env, tenant, instance)
    assert first.success
    checks = {e.check_name: e.passed for e in first.get_asset_check_evaluations()}
    assert checks == {"care_site_id_unique": True, "care_site_name_not_null": True, "provider_id_unique": True,
                      "provider_name_not_null": True, "care_site_fk_resolves": True, "counts_reconcile": True,
                      "source_deletions_bounded": True, "npi_check_digit": False,
                      "specialty_mapped_share": True}  # the sample's NPIs fail: WARN
    meta = _metadata(first, PROVIDER_KEY)
    assert (meta["file_rows_read"], meta["file_rows_new"], meta["file_rows_merged"],
            meta["file_rows_quarantined"]) == (15, 6, 8, 1)
    assert meta["source_rows"] == meta["source_new"] == 200
    provider = lakehouse.read(ns, tables.T_PROVIDER)
    assert provider.schema.names == tables.PROVIDER.names and meta["dagster/row_count"] == provider.num_rows
    john = rows_by(provider, "npi")["1234567890"]
    assert john["provider_name"] == "John Doe" and john["care_site_id"] == 1
    assert lakehouse.read(ns, tables.T_CARE_SITE).num_rows == 8
    quarantine = lakehouse.read(ns, tables.T_QUARANTINE).to_pylist()
    assert {(q["source_object"], q["reason"]) for q in quarantine if q["source_system"] == "client_file"} == {
        (key, "missing_provider_name")}
    log = lakehouse.read(ns, tables.T_RUN_LOG).to_pylist()
    assert [(r["file_rows_read"], r["processed_files"]) for r in log] == [(15, [f"{key}#{_etag(s3, tenant, key)}"])]

    second = run_tenant(env, tenant, instance, run_config=FULL_REFRESH)  # unchanged: skipped unless forced
    assert second.success
    assert _metadata(second, LANDING_KEY)["new_files"] == 0
    meta = _metadata(second, PROVIDER_KEY)
    assert (meta["file_rows_read"], meta["source_unchanged"], meta["source_new"]) == (0, 200, 0)
    assert lakehouse.read(ns, tables.T_PROVIDER).sort_by("provider_id").equals(provider.sort_by("provider_id"))
    assert lakehouse.read(ns, tables.T_LANDING_ROW).num_rows == 15  # the file was taken in once


def _etag(s3, tenant, key) -> str:
    return s3.get_client().head_object(Bucket=tenant.landing_bucket, Key=key)["ETag"].strip('"')


def test_bad_files_are_quarantined_and_the_run_goes_on(make_tenants, s3, lakehouse, instance):
    env = make_tenants(providers=100)
    tenant = env.tenant
    drop_file(s3, tenant, "d1/providers.json", b'[{"ProviderName": "Nora Quinn", "ProviderID": "77", '
                                               b'"NPI": "1234567893", "Specialty": "Ortho", "SiteName": "Metro Med"}]')
    drop_file(s3, tenant, "d1/broken.csv", b"ProviderName,ProviderID,NPI\nAnn,1\n")
    drop_file(s3, tenant, "d1/no_npi_column.csv", b"ProviderName,ProviderID\nAnn,1\n")
    result = run_tenant(env, tenant, instance)
    assert result.success
    quarantine = {(q["source_object"].rsplit("/", 1)[-1], q["reason"])
                  for q in lakehouse.read(tenant.namespace, tables.T_QUARANTINE).to_pylist()
                  if q["source_system"] == "client_file"}
    assert quarantine == {("broken.csv", "wrong_field_count"), ("no_npi_column.csv", "missing_columns")}
    nora = rows_by(lakehouse.read(tenant.namespace, tables.T_PROVIDER), "npi")["1234567893"]
    assert (nora["specialty_concept_id"], nora["care_site_id"], nora["provider_type_concept_id"]) == (38004465, 3, 0)
    assert _metadata(result, QUARANTINE_KEY)["reasons"] == {"missing_columns": 1, "wrong_field_count": 1} | {
        k: v for k, v in _metadata(result, QUARANTINE_KEY)["reasons"].items() if k == "missing_provider_name"}


def test_an_unbalanced_count_blocks_publication_and_keeps_every_published_table(make_tenants, lakehouse,
                                                                             instance, monkeypatch):
    env = make_tenants(providers=50)
    tenant, ns = env.tenant, env.tenant.namespace
    assert run_tenant(env, tenant, instance).success
    published = {t: lakehouse.load_table(ns, t).current_snapshot().snapshot_id
                 for t in (tables.T_PROVIDER, tables.T_PROVENANCE, tables.T_QUARANTINE, tables.T_FLAG)}
    # As if a join had duplicated a provider row: the counts no longer balance.
    real = assets.provider_audits
    monkeypatch.setattr(assets, "provider_audits", lambda counts, ids, flags, **kwargs: real(
        dataclasses.replace(counts, providers=counts.providers + 1), ids, flags, **kwargs))
    result = run_tenant(env, tenant, instance, raise_on_error=False, run_config=FULL_REFRESH)
    assert not result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["counts_reconcile"] is False and checks["provider_id_unique"] is True
    assert "nothing published" in result.failure_data_for_node("omop_provider").error.message
    assert {t: lakehouse.load_table(ns, t).current_snapshot().snapshot_id for t in published} == published


def test_overlapping_runs_appending_the_same_keys_do_not_duplicate_providers(make_tenants, lakehouse, instance):
    env = make_tenants(providers=50)
    tenant, ns = env.tenant, env.tenant.namespace
    assert run_tenant(env, tenant, instance).success
    first = lakehouse.read(ns, tables.T_PROVIDER).sort_by("provider_id")
    # What a second, overlapping run of the tenant would have appended: the same keys once more, one
    # of them with another id.
    again = lakehouse.read(ns, tables.T_PROVIDER_ID_MAP)
    again = again.set_column(1, "id", pa.array([i + (1000 if k == "pg:1" else 0) for k, i in zip(
        again["natural_key"].to_pylist(), again["id"].to_pylist(), strict=True)], pa.int64()))
    list(lakehouse.write_audit_publish(ns, tables.T_PROVIDER_ID_MAP, again, mode="append"))
    assert run_tenant(env, tenant, instance, run_config=FULL_REFRESH).success
    assert lakehouse.read(ns, tables.T_PROVIDER).sort_by("provider_id").equals(first)


def test_configuration_errors_fail_fast_without_retries_and_leave_other_tenants_alone(make_tenants, instance,
                                                                                   monkeypatch, lakehouse):
    env = make_tenants(2, providers=40)
    good, bad = env.tenants
    env.path.write_text(env.path.read_text().replace(f"source_schema: {bad.source_schema}",
                                                     "source_schema: omop_source_missing"))
    result = run_tenant(env, bad, instance, raise_on_error=False)
    assert not result.success
    message = result.failure_data_for_node(checks.GATE_OP).error.message  # the fingerprint reads it first
    assert f"tenant '{bad.name}': cannot read source table omop_source_missing.care_site" in message
    assert not [e for e in result.all_events if e.event_type_value == "STEP_RESTARTED"]  # not retried

    monkeypatch.delenv(WAREHOUSE_DSN)  # the variable the tenants file names for the source DSN
    result = run_tenant(env, bad, instance, raise_on_error=False)
    assert "environment variable WAREHOUSE_DSN" in result.failure_data_for_node(checks.GATE_OP).error.message
    monkeypatch.undo()
    assert run_tenant(env, good, instance).success
    assert not lakehouse.table_exists(bad.namespace, tables.T_PROVIDER)


def test_care_sites_sharing_a_code_fail_the_run_naming_them_and_change_nothing(make_tenants, lakehouse, instance, pg):
    """Found by test_random_edits: two source care sites with one code got one care_site_id, and the
    blocking check stopped the publish with only "3 duplicate care_site_id"."""
    env = make_tenants(providers=40)
    tenant, ns = env.tenant, env.tenant.namespace
    assert run_tenant(env, tenant, instance).success
    published, id_map = lakehouse.read(ns, tables.T_CARE_SITE), lakehouse.read(ns, tables.T_CARE_SITE_ID_MAP)
    pg.execute(sql.SQL("INSERT INTO {} (care_site_name, care_site_source_value) VALUES "
                       "('Clinic North', 'cl 1'), ('Clinic South', 'CL  1'), ('Clinic East', 'CL2')").format(
        sql.Identifier(tenant.source_schema, "care_site")))

    result = run_tenant(env, tenant, instance, run_config=FULL_REFRESH, raise_on_error=False)
    assert not result.success
    message = result.failure_data_for_node("omop__care_site").error.message
    assert f"tenant '{tenant.name}', postgres:{tenant.source_schema}.care_site" in message
    assert "code 'CL 1': 'Clinic North', 'Clinic South'" in message and "Clinic East" not in message
    assert not [e for e in result.all_events if e.event_type_value == "STEP_RESTARTED"]  # bad data: not retried
    assert lakehouse.read(ns, tables.T_CARE_SITE).equals(published)  # nothing published
    assert lakehouse.read(ns, tables.T_CARE_SITE_ID_MAP).equals(id_map)  # no id reserved


def test_the_provider_metadata_names_the_snapshot_its_commit_created_not_a_later_one(make_tenants, lakehouse,
                                                                                     instance, monkeypatch):
    """Another writer (here a second catalog, as another process would hold) commits to the provider
    table right after the run's commit: the run's metadata still names the snapshot it published."""
    env = make_tenants(providers=30)
    ns = env.tenant.namespace
    second = another_catalog(lakehouse)
    real_commit, ours = LakehouseResource._commit, []

    def commit_then_another_writer(self, tx, namespace, table, *args, **kwargs):
        committed = real_commit(self, tx, namespace, table, *args, **kwargs)
        if namespace == ns and table == tables.T_PROVIDER:
            ours.append(committed.current_snapshot().snapshot_id)
            other = second.load_table((ns, table))
            other.overwrite(other.scan().to_arrow())  # the same rows, newer snapshots
        return committed

    monkeypatch.setattr(LakehouseResource, "_commit", commit_then_another_writer)
    result = run_tenant(env, env.tenant, instance)
    assert result.success and len(ours) == 1
    assert lakehouse.load_table(ns, tables.T_PROVIDER).current_snapshot().snapshot_id != ours[0]
    assert _metadata(result, PROVIDER_KEY)["iceberg/snapshot_id"] == str(ours[0])


def test_a_runs_flags_are_read_from_its_config_validated_with_their_defaults():
    assert assets.landing_files.op.name == checks.GATE_OP  # where run_flags and the blocked check's hint look
    assert run_flags({}) == assets.TenantRunConfig()
    assert run_flags({"ops": {"other_op": {"config": {"full_refresh": True}}}}) == assets.TenantRunConfig()
    flags = run_flags(gate_config(allow_deleted_providers=7))  # under the gate's op name, as Dagster keys it
    assert (flags.full_refresh, flags.allow_deleted_providers) == (False, 7)
    assert run_flags(FULL_REFRESH).full_refresh


def test_a_runs_flags_given_as_env_are_resolved_and_invalid_ones_fail_without_retries(monkeypatch):
    """Dagster's config takes {"env": NAME} for a scalar; a negative, malformed or unknown flag, or one
    given as a variable that is not set, fails the step naming the setting (and the variable), and is not
    retried (a retry reads the same config). On the code before, the unknown flag was ignored and the unset
    variable only said "valid integer"."""
    gate = assets.landing_files.op.name
    monkeypatch.setenv("OMOP_TEST_DELETED", "12")
    monkeypatch.delenv("OMOP_TEST_UNSET", raising=False)
    assert run_flags({"ops": {gate: {"config": {"allow_deleted_providers": {"env": "OMOP_TEST_DELETED"}}}}}
                     ).allow_deleted_providers == 12
    for given, named in (({"allow_deleted_providers": -1}, "must be a count"),
                         ({"allow_deleted_providers": "many"}, "allow_deleted_providers"),
                         ({"full_refresh": "maybe"}, "full_refresh"),
                         ({"allow_mass_deletion": True}, "allow_mass_deletion"),  # the flag it replaced
                         ({"allow_deleted_providers": {"env": "OMOP_TEST_UNSET"}}, "OMOP_TEST_UNSET")):
        with pytest.raises(dg.Failure) as failed:
            run_flags({"ops": {gate: {"config": given}}})
        assert named in failed.value.description and f"ops.{gate}.config" in failed.value.description
        assert failed.value.allow_retries is False


def test_a_run_launched_with_the_replaced_allow_mass_deletion_is_refused(make_tenants, instance):
    """docs/omop.md: the count replaced allow_mass_deletion: true; a run given the old key is refused at
    launch, naming it, not run as if nothing was confirmed."""
    env = make_tenants(providers=0)
    with pytest.raises(dg.DagsterInvalidConfigError, match="allow_mass_deletion"):
        run_tenant(env, env.tenant, instance,
                   run_config={"ops": {assets.landing_files.op.name: {"config": {"allow_mass_deletion": True}}}})
