"""The archive state machine on the real PostgreSQL, S3 and Iceberg catalog: happy path, S3 outage,
a lost PostgreSQL connection, rows changing meanwhile, a failing reconciliation, and the process
SIGKILLed after every step. After each rerun the invariant holds: every ad loaded is either live in
ads.ads or exactly once in the archive."""

import math
import subprocess
import sys
from datetime import timedelta

import pytest

from covid_lakehouse.defs.ads.archive import (
    APPLICATION_NAME,
    ARCHIVE_NAMESPACE,
    ARCHIVE_TABLE,
    ReconciliationError,
    archive_old_rows,
)
from covid_lakehouse.defs.ads.assets import RECONCILIATION_CHECK, ads, ads_archive
from covid_lakehouse.defs.ads.settings import AdsSettings
from covid_lakehouse.runtime import REPO_ROOT
from covid_lakehouse_dev.apis.ads import AdsMock
from covid_lakehouse_tests.ads.support import (
    NOW,
    archived_rows,
    assert_invariant,
    live_ids,
    load_rows,
    materialize,
)

pytestmark = pytest.mark.integration

RETENTION = timedelta(hours=12)
CHUNK = 40


def _old_ids(pg, retention: timedelta = RETENTION) -> set[str]:
    return {r[0] for r in pg.execute("SELECT ad_id::text FROM ads.ads WHERE shown_at < %s", (NOW - retention,))}


def _batches(pg) -> list[tuple[str, str]]:
    return [(str(b), s) for b, s in pg.execute("SELECT batch_id, status FROM ads.archive_batches ORDER BY created_at")]


@pytest.fixture
def loaded(ads_clean, warehouse) -> set[str]:
    """300 ads shown up to ~28 h before NOW."""
    return load_rows(warehouse, AdsMock(seed=11, now=NOW.timestamp), pages=3)


def test_archive_moves_old_rows_to_iceberg_under_ad_data_archive(loaded, warehouse, lakehouse, pg, s3):
    old = _old_ids(pg)
    originals = {r[0]: r[1:] for r in pg.execute(
        "SELECT ad_id::text, ad_campaign, ad_campaign_raw, ad_scheme_origin, ad_scheme_approved, shown_at, "
        "backup_key, row_version FROM ads.ads")}
    assert 0 < len(old) < len(loaded)

    [report] = archive_old_rows(warehouse, lakehouse, retention=RETENTION, now=NOW, chunk_rows=CHUNK)
    assert (report.planned_rows, report.archived_rows, report.deleted_rows, report.kept_rows) == (
        len(old), len(old), len(old), 0)
    assert len(report.snapshot_ids) == 1  # one snapshot per batch
    assert live_ids(pg) == loaded - old
    assert assert_invariant(pg, lakehouse, loaded) == (len(loaded) - len(old), len(old))
    assert _batches(pg) == [(report.batch_id, "done")]
    assert pg.execute("SELECT count(*) FROM ads.archive_pending").fetchone()[0] == 0

    table = lakehouse.load_table(ARCHIVE_NAMESPACE, ARCHIVE_TABLE)
    assert table.location() == "s3://ad-data/archive/ads_archive"
    assert [f.name for f in table.spec().fields] == ["shown_date"]
    files = [o["Key"] for o in s3.get_client().list_objects_v2(Bucket="ad-data", Prefix="archive/")["Contents"]]
    data_files = [k for k in files if k.endswith(".parquet")]
    assert all(k.startswith("archive/ads_archive/data/shown_date=2024-05-01/") for k in data_files)
    assert len(data_files) == math.ceil(len(old) / CHUNK)  # a file per chunk (all shown on one day)
    rows = table.scan().to_arrow().to_pylist()
    for row in rows:
        assert (row["ad_campaign"], row["ad_campaign_raw"], row["ad_scheme_origin"], row["ad_scheme_approved"],
                row["shown_at"], row["backup_key"], row["row_version"]) == originals[row["ad_id"]]
        assert row["shown_date"] == row["shown_at"].date() and row["batch_id"] == report.batch_id

    assert archive_old_rows(warehouse, lakehouse, retention=RETENTION, now=NOW) == []  # nothing old left


def test_s3_outage_during_archive_deletes_nothing_and_the_rerun_finishes(loaded, warehouse, lakehouse,
                                                                          proxied_lakehouse, s3_proxy, pg):
    old = _old_ids(pg)
    outage = []

    def cut_s3(step: str) -> None:
        if step == "chunk_written" and not outage:
            outage.append(step)
            s3_proxy.stop()

    with pytest.raises(Exception):  # noqa: B017 - whatever the S3 client raises; the state is what matters
        archive_old_rows(warehouse, proxied_lakehouse, retention=RETENTION, now=NOW, chunk_rows=CHUNK, hook=cut_s3)
    assert outage
    assert live_ids(pg) == loaded  # nothing deleted
    assert archived_rows(lakehouse) == []  # nothing committed
    assert [s for _, s in _batches(pg)] == ["planned"]

    [report] = archive_old_rows(warehouse, lakehouse, retention=RETENTION, now=NOW, chunk_rows=CHUNK)
    assert report.resumed and report.archived_rows == report.deleted_rows == len(old)
    assert_invariant(pg, lakehouse, loaded)


def test_postgres_connection_lost_between_archive_commit_and_delete(loaded, warehouse, lakehouse, pg):
    old = _old_ids(pg)

    def terminate_archive_session(step: str) -> None:
        if step == "committed":
            terminated = pg.execute("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                                    "WHERE application_name = %s", (APPLICATION_NAME,)).fetchall()
            assert terminated == [(True,)]

    with pytest.raises(Exception, match="terminat|connection|closed"):
        archive_old_rows(warehouse, lakehouse, retention=RETENTION, now=NOW, chunk_rows=CHUNK,
                         hook=terminate_archive_session)
    assert live_ids(pg) == loaded  # the delete never ran
    assert {a for a, _, _ in archived_rows(lakehouse)} == old  # the commit did

    [report] = archive_old_rows(warehouse, lakehouse, retention=RETENTION, now=NOW, chunk_rows=CHUNK)
    assert report.resumed and report.deleted_rows == len(old)
    assert_invariant(pg, lakehouse, loaded)  # not appended twice


@pytest.mark.parametrize("step", ["planned", "chunk_written", "committed", "verified", "deleted"])
def test_archive_killed_after_each_step_recovers_on_rerun(loaded, warehouse, lakehouse, pg, step):
    old = _old_ids(pg)
    worker = subprocess.run(
        [sys.executable, "-m", "covid_lakehouse_tests.ads.support", "archive", step, NOW.isoformat(),
         str(RETENTION.total_seconds() / 3600), str(CHUNK)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert worker.returncode == -9, worker.stderr[-2000:]
    assert live_ids(pg) == loaded  # killed before its delete committed
    assert [s for _, s in _batches(pg)] == ["committed" if step in ("verified", "deleted") else "planned"]

    reports = archive_old_rows(warehouse, lakehouse, retention=RETENTION, now=NOW, chunk_rows=CHUNK)
    assert [r.resumed for r in reports] == [True]
    assert reports[0].archived_rows == reports[0].deleted_rows == len(old)
    assert assert_invariant(pg, lakehouse, loaded) == (len(loaded) - len(old), len(old))


@pytest.mark.parametrize("step", ["planned", "committed"])
def test_rows_changed_during_the_archive_stay_live(loaded, warehouse, lakehouse, pg, step):
    old = sorted(_old_ids(pg))
    changed = old[0]

    def update_one_row(done: str) -> None:
        if done == step:  # what a concurrent load does when the API reports the ad differently
            pg.execute("UPDATE ads.ads SET ad_group = 'brand', ad_campaign_raw = 'changed', "
                       "row_version = nextval('ads.ads_row_version'), loaded_at = now() WHERE ad_id = %s", (changed,))

    [report] = archive_old_rows(warehouse, lakehouse, retention=RETENTION, now=NOW, chunk_rows=CHUNK,
                                hook=update_one_row)
    archived = {a for a, _, _ in archived_rows(lakehouse)}
    assert changed in live_ids(pg)
    if step == "planned":  # changed before the write: not archived at all
        assert (report.archived_rows, report.deleted_rows, report.kept_rows) == (len(old) - 1, len(old) - 1, 0)
        assert archived == set(old) - {changed}
    else:  # changed after the commit: the archived (old) version is history, the new one stays live
        assert (report.archived_rows, report.deleted_rows, report.kept_rows) == (len(old), len(old) - 1, 1)
        assert archived == set(old)

    [again] = archive_old_rows(warehouse, lakehouse, retention=RETENTION, now=NOW)
    assert again.archived_rows == again.deleted_rows == 1  # the live version, archived on the next run
    versions = [(v, b) for a, v, b in archived_rows(lakehouse) if a == changed]
    assert len(versions) == len(set(versions)) == (1 if step == "planned" else 2)
    assert changed not in live_ids(pg)


def test_reconciliation_blocks_the_delete_when_a_row_left_outside_the_archive(loaded, warehouse, lakehouse, pg,
                                                                               ads_resources, instance):
    old = sorted(_old_ids(pg))

    def stop_after_commit(step: str) -> None:
        if step == "committed":
            raise RuntimeError("stopped after the commit")

    with pytest.raises(RuntimeError):
        archive_old_rows(warehouse, lakehouse, retention=RETENTION, now=NOW, chunk_rows=CHUNK, hook=stop_after_commit)
    pg.execute("DELETE FROM ads.ads WHERE ad_id = %s", (old[0],))  # someone deletes a row by hand

    result = materialize([ads_archive], ads_resources, instance)
    assert not result.success
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == RECONCILIATION_CHECK and not check.passed
    assert (check.metadata["archived_rows"].value, check.metadata["deleted_rows"].value) == (len(old), len(old) - 1)
    assert live_ids(pg) == loaded - {old[0]}  # the transaction rolled back: nothing deleted
    with pytest.raises(ReconciliationError):  # and it keeps refusing until someone looks
        archive_old_rows(warehouse, lakehouse, retention=RETENTION, now=NOW)


def test_archive_asset_reports_the_reconciliation_and_purges_expired_backups(ads_clean, ads_api, ads_resources,
                                                                           instance, pg, lakehouse, s3):
    client = s3.get_client()
    client.put_object(Bucket="ad-data", Key="backup/date=2020-01-01/000000000000-old-1.json", Body=b"[]")
    assert materialize([ads], ads_resources, instance).success
    loaded = live_ids(pg)
    resources = {**ads_resources, "ads_settings": AdsSettings(backup_retention_days=30)}
    result = materialize([ads_archive], resources, instance)  # ADS_ARCHIVE_RETENTION_HOURS=12 from the mock
    assert result.success
    [check] = result.get_asset_check_evaluations()
    assert check.passed and check.metadata["archived_rows"].value == check.metadata["deleted_rows"].value > 0
    metadata = result.asset_materializations_for_node("ads__ads_archive")[0].metadata
    assert metadata["backups_deleted"].value == 1 and metadata["retention_hours"].value == 12
    assert metadata["dagster/row_count"].value == check.metadata["archived_rows"].value
    assert_invariant(pg, lakehouse, loaded)
    remaining = [o["Key"] for o in client.list_objects_v2(Bucket="ad-data", Prefix="backup/")["Contents"]]
    assert len(remaining) == 1 and "2020-01-01" not in remaining[0]
