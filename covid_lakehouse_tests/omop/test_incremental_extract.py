"""The provider source extract, incremental by row hashes per provider_id (source_snapshot.py): it
fetches exactly the new and changed rows, rebuilds the file a full extract gives (NULL and '' kept
apart), falls back to a full extract whenever the snapshot cannot be trusted, and a run that
committed its snapshot but failed to publish leaves the next run correct. Real PostgreSQL, S3 and
Iceberg."""

from __future__ import annotations

import dagster as dg
import pyarrow.parquet as pq
import pytest
from psycopg import sql

from covid_lakehouse.defs.omop import assets, source_snapshot, tables
from covid_lakehouse.defs.omop.source_snapshot import extract_provider, store
from covid_lakehouse.lib.settings import SettingError
from covid_lakehouse_tests.omop.support import (
    FULL_REFRESH,
    flush_stats,
    provider_metadata,
    published,
    run_tenant,
    source_changes,
    source_rows,
)

# The incremental extract on (off by default), as a deployment with remote sources sets it.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("incremental_extract_on")]


def _on_provider(pg, tenant, statement: str, params: tuple = ()) -> None:
    pg.execute(sql.SQL(statement).format(t=sql.Identifier(tenant.source_schema, "provider")), params)
    # Counted now, not up to a second later: a run started sooner would rightly skip the change
    # (its gate's signal has not moved yet) and a test expecting it to run would fail.
    flush_stats(pg)


def _rows(path) -> list[dict]:
    return sorted(pq.read_table(path).to_pylist(), key=lambda row: (row["provider_id"] or 0, row["source_row_hash"]))


# A few of each kind of edit an incremental extract must get right.
EDITS = [
    "UPDATE {t} SET provider_name = 'Grace Hopper' WHERE provider_id = 7",
    "UPDATE {t} SET specialty = NULL WHERE provider_id = 8",  # a value to NULL
    "UPDATE {t} SET care_site = '' WHERE provider_id = 10",  # a value to '' (not NULL)
    "UPDATE {t} SET specialty_source_value = '' WHERE provider_id = 14",  # NULL to ''
    "UPDATE {t} SET provider_source_value = provider_source_value WHERE provider_id = 12",  # same values
    "DELETE FROM {t} WHERE provider_id = 9",
    # an insert+delete pair: same row count
    "WITH gone AS (DELETE FROM {t} WHERE provider_id = 11 RETURNING provider_name, specialty, care_site) "
    "INSERT INTO {t} (provider_id, provider_name, npi, specialty, care_site) "
    "SELECT 100011, provider_name, '1000000002', specialty, care_site FROM gone",
    "INSERT INTO {t} (provider_name, npi, specialty, care_site) VALUES ('Ada Byron', '1000000001', 'Cardiology', '')",
]


def test_incremental_extract_fetches_only_changed_rows_and_equals_a_full_extract(make_tenants, lakehouse, pg, tmp_path):
    tenant = make_tenants(providers=200).tenant
    first = extract_provider(tenant, lakehouse, tmp_path / "first")
    assert (first.mode, first.reason, first.fetched) == ("full", "no snapshot", 200)
    store(lakehouse, tenant.namespace, first)
    _on_provider(pg, tenant, "UPDATE {t} SET specialty_source_value = NULL WHERE provider_id = 14")
    store(lakehouse, tenant.namespace, extract_provider(tenant, lakehouse, tmp_path / "nulled"))
    before = source_rows(pg, tenant)
    for statement in EDITS:
        _on_provider(pg, tenant, statement)
    after = source_rows(pg, tenant)

    second = extract_provider(tenant, lakehouse, tmp_path / "second")
    assert second.mode == "incremental", second.reason
    # the fetched rows are exactly the new and changed ones (not the same-value update), from the source
    changed = {key for key, row in after.items() if before.get(key) != row}
    inserted = after.keys() - before.keys()
    assert len(inserted) == 2 and changed == {7, 8, 10, 14} | inserted
    fetched = pq.read_table(tmp_path / "second" / "fetched.parquet")
    assert set(fetched["provider_id"].to_pylist()) == changed
    assert (second.fetched, second.deleted, second.reused) == (len(changed), 2, len(after) - len(changed))
    assert (second.fetched, second.deleted) == source_changes(before, after)

    full = extract_provider(tenant, lakehouse, tmp_path / "full", full_refresh=True)
    assert (full.mode, full.reason) == ("full", "full_refresh")
    rebuilt, expected = _rows(second.path), _rows(full.path)
    assert rebuilt == expected
    by_id = {row["provider_id"]: row for row in rebuilt}
    assert by_id[8]["specialty"] is None and by_id[10]["care_site"] == "" and by_id[14]["specialty_source_value"] == ""
    assert 9 not in by_id and 11 not in by_id
    assert pq.read_schema(second.path).names == tables.SOURCE_ROW.names


def test_an_unchanged_source_fetches_nothing_and_keeps_the_snapshot(make_tenants, lakehouse, tmp_path):
    tenant = make_tenants(providers=50).tenant
    store(lakehouse, tenant.namespace, extract_provider(tenant, lakehouse, tmp_path / "first"))
    snapshot = lakehouse.load_table(tenant.namespace, tables.T_SOURCE_ROW).current_snapshot().snapshot_id
    again = extract_provider(tenant, lakehouse, tmp_path / "again")
    assert (again.mode, again.fetched, again.reused, again.deleted) == ("incremental", 0, 50, 0)
    store(lakehouse, tenant.namespace, again)
    assert lakehouse.load_table(tenant.namespace, tables.T_SOURCE_ROW).current_snapshot().snapshot_id == snapshot


def _version_bumped(monkeypatch, pg, tenant):
    monkeypatch.setattr(source_snapshot, "VERSION", source_snapshot.VERSION + 1)


def _retyped(monkeypatch, pg, tenant):
    # the rows' text stays the same: only the column definitions tell
    _on_provider(pg, tenant, "ALTER TABLE {t} ALTER COLUMN specialty TYPE text")


def _repeated_id(monkeypatch, pg, tenant):
    _on_provider(pg, tenant, "ALTER TABLE {t} DROP CONSTRAINT IF EXISTS provider_pkey")
    _on_provider(pg, tenant, "INSERT INTO {t} (provider_id, provider_name, npi) VALUES (3, 'Twin', '1000000003')")


def _null_id(monkeypatch, pg, tenant):
    _on_provider(pg, tenant, "ALTER TABLE {t} DROP CONSTRAINT IF EXISTS provider_pkey")
    _on_provider(pg, tenant, "ALTER TABLE {t} ALTER COLUMN provider_id DROP NOT NULL")
    _on_provider(pg, tenant, "INSERT INTO {t} (provider_id, provider_name, npi) VALUES (NULL, 'Nobody', '1000000003')")


def _large_change(monkeypatch, pg, tenant):
    _on_provider(pg, tenant, "UPDATE {t} SET provider_name = provider_name || ' Jr' WHERE provider_id <= 20")


@pytest.mark.parametrize(("change", "reason"), [
    (_version_bumped, "differ from the snapshot's"), (_retyped, "differ from the snapshot's"),
    (_repeated_id, "provider_id NULL or repeated in the source"),
    (_null_id, "provider_id NULL or repeated in the source"), (_large_change, "new or changed (over 25%)"),
])
def test_a_snapshot_that_cannot_be_trusted_gives_a_full_extract(change, reason, make_tenants, lakehouse, pg, tmp_path,
                                                                monkeypatch):
    tenant = make_tenants(providers=60).tenant
    store(lakehouse, tenant.namespace, extract_provider(tenant, lakehouse, tmp_path / "first"))
    change(monkeypatch, pg, tenant)
    again = extract_provider(tenant, lakehouse, tmp_path / "again")
    assert again.mode == "full" and reason in again.reason, again.reason
    assert _rows(again.path) == _rows(extract_provider(tenant, lakehouse, tmp_path / "full", full_refresh=True).path)


def test_a_snapshot_with_repeated_ids_is_not_trusted(make_tenants, lakehouse, pg, tmp_path):
    """Rows of a snapshot taken while provider_id repeated cannot be matched by id, even once the
    source is unique again."""
    tenant = make_tenants(providers=60).tenant
    _repeated_id(None, pg, tenant)
    store(lakehouse, tenant.namespace, extract_provider(tenant, lakehouse, tmp_path / "first"))
    _on_provider(pg, tenant, "DELETE FROM {t} WHERE provider_name = 'Twin'")
    again = extract_provider(tenant, lakehouse, tmp_path / "again")
    assert (again.mode, again.reason) == ("full", "provider_id NULL or repeated in the snapshot")


def test_a_retyped_source_column_runs_a_full_extract_and_publishes_what_a_full_refresh_does(
        make_tenants, lakehouse, pg, instance):
    env = make_tenants(providers=80, dirt_rate=0.1)
    tenant = env.tenant
    assert provider_metadata(run_tenant(env, tenant, instance))["extract_mode"] == "full"
    _on_provider(pg, tenant, "ALTER TABLE {t} ALTER COLUMN care_site TYPE text")
    _on_provider(pg, tenant, "UPDATE {t} SET care_site = 'Metro Med' WHERE provider_id = 4")
    ran = provider_metadata(run_tenant(env, tenant, instance))
    assert (ran["extract_mode"], ran["source_rows_fetched"]) == ("full", 80), ran
    after = published(lakehouse, tenant.namespace)
    assert run_tenant(env, tenant, instance, run_config=FULL_REFRESH).success
    assert published(lakehouse, tenant.namespace) == after


@pytest.mark.parametrize("failing", ["append_files", "stage_run"])
def test_a_run_that_stored_its_snapshot_but_failed_to_publish_leaves_the_next_run_correct(
        failing, make_tenants, lakehouse, pg, instance, monkeypatch):
    """The snapshot is committed while the transform runs, before the outputs (append_files: the id
    map, the first write after it) and the run log (stage_run, committed last): a failure at either leaves
    a snapshot ahead of the published outputs, which the next run trusts rightly (it caches source
    rows with their hashes, not what was published)."""
    env = make_tenants(providers=100, dirt_rate=0.1)
    tenant = env.tenant
    assert run_tenant(env, tenant, instance).success
    _on_provider(pg, tenant, "UPDATE {t} SET provider_name = 'Grace Hopper' WHERE provider_id = 7")
    _on_provider(pg, tenant, "DELETE FROM {t} WHERE provider_id = 9")

    def crash(*args, **kwargs):
        raise dg.Failure("crash after the snapshot was stored", allow_retries=False)

    original = getattr(assets, failing)
    monkeypatch.setattr(assets, failing, crash)
    assert not run_tenant(env, tenant, instance, raise_on_error=False).success
    monkeypatch.setattr(assets, failing, original)
    stored = source_snapshot.stored_identity(lakehouse, tenant.namespace)
    assert stored is not None
    before = source_rows(pg, tenant)
    _on_provider(pg, tenant, "UPDATE {t} SET specialty = NULL WHERE provider_id = 8")
    _on_provider(pg, tenant, "UPDATE {t} SET provider_name = 'Ada Byron' WHERE provider_id = 7")

    ran = run_tenant(env, tenant, instance)
    extracted = provider_metadata(ran)
    # incremental from the crashed run's snapshot: it fetched only what changed since that run
    assert extracted["extract_mode"] == "incremental", extracted
    assert (extracted["source_rows_fetched"], extracted["source_rows_deleted"]) == \
        source_changes(before, source_rows(pg, tenant)) == (2, 0)
    after = published(lakehouse, tenant.namespace)
    assert run_tenant(env, tenant, instance, run_config=FULL_REFRESH).success
    assert published(lakehouse, tenant.namespace) == after


def test_max_share_zero_is_the_plain_full_extract_without_a_snapshot(make_tenants, lakehouse, tmp_path, monkeypatch):
    tenant = make_tenants(providers=40).tenant
    store(lakehouse, tenant.namespace, extract_provider(tenant, lakehouse, tmp_path / "first"))
    monkeypatch.setenv(source_snapshot.MAX_CHANGED_SHARE.name, "0")
    plain = extract_provider(tenant, lakehouse, tmp_path / "plain")
    assert (plain.mode, plain.reason, plain.fetched) == ("full", "OMOP_INCREMENTAL_EXTRACT_MAX_SHARE=0", 40)
    assert pq.read_schema(plain.path).names == tables.SOURCE_ROW.names[:-1]  # no hashes computed
    stored = lakehouse.load_table(tenant.namespace, tables.T_SOURCE_ROW).current_snapshot().snapshot_id
    store(lakehouse, tenant.namespace, plain)
    assert lakehouse.load_table(tenant.namespace, tables.T_SOURCE_ROW).current_snapshot().snapshot_id == stored
    monkeypatch.setenv(source_snapshot.MAX_CHANGED_SHARE.name, "1.5")
    with pytest.raises(SettingError, match="OMOP_INCREMENTAL_EXTRACT_MAX_SHARE must be at most 1"):
        extract_provider(tenant, lakehouse, tmp_path / "bad")
