"""The provider extract against a source that moves under it (real PostgreSQL, S3, Iceberg):

- a TRUNCATE + reload committed while the extract waits for the table is read as reloaded, never as
  the empty table an older snapshot sees (TRUNCATE is not MVCC-safe), on the plain and the
  incremental path: without the lock taken before the snapshot, the run published every provider as
  deleted;
- a provider_id that is not an integer type extracts in full, with the reason (the fetch matches ids
  as bigint: it failed with an unnamed operator error on every run);
- the fetch sends its ids in batches only where an index finds them (else one scan per batch);
- a snapshot another run of the tenant committed meanwhile is kept, and this run goes on."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pyarrow.parquet as pq
import pytest
from psycopg import sql

from covid_lakehouse.defs.omop import tables
from covid_lakehouse.defs.omop.source_snapshot import (
    ID_BATCH,
    MAX_CHANGED_SHARE,
    extract_provider,
    fetch_batch_size,
    store,
)
from covid_lakehouse.lib.lakehouse import LakehouseResource

pytestmark = pytest.mark.integration


def _provider(tenant) -> sql.Identifier:
    return sql.Identifier(tenant.source_schema, "provider")


def _until_a_session_waits_for(pg, tenant) -> None:
    """Returns once a session waits for a lock on the tenant's provider table (the extract)."""
    for _ in range(6000):  # a condition polled, bounded (60 s): PostgreSQL has no event to wait on for it
        if pg.execute("SELECT count(*) FROM pg_locks WHERE relation = to_regclass(%s) AND NOT granted",
                      (f'"{tenant.source_schema}"."provider"',)).fetchone()[0]:
            return
        time.sleep(0.01)
    raise AssertionError("the extract never waited for the provider table's lock")


def _extract_during_reload(pg, tenant, extract):
    """``extract()`` run while another session holds a TRUNCATE + reload of the provider table (the
    same rows, provider 3 renamed) uncommitted; committed once the extract waits for the table."""
    table = _provider(tenant)
    with psycopg.connect(tenant.source_dsn()) as holder, ThreadPoolExecutor(1) as pool:
        with holder.transaction():
            holder.execute(sql.SQL("CREATE TEMP TABLE kept AS SELECT * FROM {}").format(table))
            holder.execute(sql.SQL("TRUNCATE {}").format(table))
            holder.execute(sql.SQL("INSERT INTO {} SELECT * FROM kept").format(table))
            holder.execute(sql.SQL("UPDATE {} SET provider_name = 'Reloaded Name' WHERE provider_id = 3").format(table))
            running = pool.submit(extract)
            _until_a_session_waits_for(pg, tenant)
        return running.result()


@pytest.mark.parametrize("share", ["0", "0.25"])
def test_a_truncate_and_reload_during_the_extract_is_read_reloaded_not_empty(make_tenants, lakehouse, pg, tmp_path,
                                                                            monkeypatch, share):
    monkeypatch.setenv(MAX_CHANGED_SHARE.name, share)
    tenant = make_tenants(providers=60).tenant
    if share != "0":  # the incremental path: a snapshot to compare with
        store(lakehouse, tenant.namespace, extract_provider(tenant, lakehouse, tmp_path / "first"))
    extracted = _extract_during_reload(pg, tenant, lambda: extract_provider(tenant, lakehouse, tmp_path / "during"))
    rows = {row["provider_id"]: row for row in pq.read_table(extracted.path).to_pylist()}
    assert len(rows) == 60, f"{extracted.describe()}: read {len(rows)} of the 60 reloaded rows"
    assert rows[3]["provider_name"] == "Reloaded Name"
    if share != "0":
        assert (extracted.mode, extracted.fetched, extracted.deleted) == ("incremental", 1, 0), extracted.describe()


def test_a_text_provider_id_extracts_in_full_with_the_reason(make_tenants, lakehouse, pg, tmp_path,
                                                            incremental_extract_on):
    tenant = make_tenants(providers=40).tenant
    pg.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN provider_id TYPE varchar").format(_provider(tenant)))
    # the retype itself: another identity, a full extract, whose snapshot then has the varchar identity
    store(lakehouse, tenant.namespace, extract_provider(tenant, lakehouse, tmp_path / "retyped"))
    pg.execute(sql.SQL("UPDATE {} SET provider_name = 'Grace Hopper' WHERE provider_id = '5'").format(_provider(tenant)))
    again = extract_provider(tenant, lakehouse, tmp_path / "again")
    assert (again.mode, again.reason) == ("full", "provider_id is character varying, not an integer: rows cannot "
                                                  "be fetched by it")
    rows = {row["provider_id"]: row for row in pq.read_table(again.path).to_pylist()}
    assert len(rows) == 40 and rows[5]["provider_name"] == "Grace Hopper"


def test_ids_are_fetched_in_batches_only_where_an_index_finds_them(make_tenants, pg):
    tenant = make_tenants(providers=10).tenant
    with psycopg.connect(tenant.source_dsn(), autocommit=True) as conn:
        # the seed's primary key finds them: batches of ID_BATCH
        assert fetch_batch_size(conn, tenant, 120_000) == ID_BATCH
        # without an index each batch would scan the table: one statement (one scan) for every wanted id
        pg.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT provider_pkey").format(_provider(tenant)))
        assert fetch_batch_size(conn, tenant, 120_000) == 120_000
        pg.execute(sql.SQL("CREATE INDEX ON {} (provider_name, provider_id)").format(_provider(tenant)))
        assert fetch_batch_size(conn, tenant, 120_000) == 120_000  # an index not led by provider_id finds none


def test_a_snapshot_committed_meanwhile_by_another_run_is_kept_and_this_run_goes_on(
        make_tenants, lakehouse, pg, tmp_path, monkeypatch, incremental_extract_on):
    """Two runs of a tenant at once (a manual run beside a scheduled one): the second snapshot commit
    meets the first's. It used to fail the run (CommitFailedException) before anything was published."""
    tenant = make_tenants(providers=30).tenant
    store(lakehouse, tenant.namespace, extract_provider(tenant, lakehouse, tmp_path / "first"))
    this_run = extract_provider(tenant, lakehouse, tmp_path / "this", full_refresh=True)
    pg.execute(sql.SQL("UPDATE {} SET provider_name = 'Ada Byron' WHERE provider_id = 4").format(_provider(tenant)))
    other_run = extract_provider(tenant, lakehouse, tmp_path / "other", full_refresh=True)
    real = LakehouseResource.staging_filesystem
    committed: list[bool] = []
    started: list[bool] = []

    def other_run_commits_first(self):
        # while this run stages its file (its table already loaded), the other run commits its snapshot
        if not started:
            started.append(True)
            committed.append(store(lakehouse, tenant.namespace, other_run))
        return real(self)

    monkeypatch.setattr(LakehouseResource, "staging_filesystem", other_run_commits_first)
    assert store(lakehouse, tenant.namespace, this_run) is False
    assert committed == [True]
    monkeypatch.setattr(LakehouseResource, "staging_filesystem", real)
    stored = lakehouse.read(tenant.namespace, tables.T_SOURCE_ROW)
    assert stored.num_rows == 30 and "Ada Byron" in stored["provider_name"].to_pylist()  # the other run's
