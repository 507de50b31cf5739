"""Lakehouse maintenance never breaks the ads archive: after expiring every snapshot but the current
one and deleting every unreferenced file (a crashed write's parquet included), each ad is still live
or archived exactly once, the archive reads the same rows, and restore and a new archive run work."""

from datetime import UTC, date, datetime, timedelta

import pytest

from covid_lakehouse.defs.ads.archive import archive_old_rows, restore_date
from covid_lakehouse.lib.lakehouse_maintenance import bucket_key, maintain_table
from covid_lakehouse_dev.apis.ads import AdsMock
from covid_lakehouse_tests.ads.support import NOW, archived_rows, assert_invariant, load_rows

pytestmark = pytest.mark.integration

DAY = date(2024, 5, 1)


def test_the_archive_invariant_holds_after_maintenance(ads_clean, warehouse, lakehouse, pg, s3):
    loaded = load_rows(warehouse, AdsMock(seed=5, now=NOW.timestamp), pages=2)
    archive_old_rows(warehouse, lakehouse, retention=timedelta(hours=2), now=NOW, chunk_rows=50)
    restore_date(warehouse, lakehouse, DAY)  # a delete snapshot on top of the batch's append
    archived = sorted(archived_rows(lakehouse))
    table = lakehouse.load_table("ads", "ads_archive")
    bucket, key = bucket_key(f"{table.metadata.location}/data/shown_date={DAY}/crashed-attempt-00000.parquet")
    s3.get_client().put_object(Bucket=bucket, Key=key, Body=b"PAR1 never committed")
    assert len(table.metadata.snapshots) >= 2

    later = datetime.now(UTC) + timedelta(days=30)  # every snapshot past the retention, every file old
    report = maintain_table(lakehouse.catalog(), ("ads", "ads_archive"), s3.get_client(),
                            retention=timedelta(days=7), margin=timedelta(hours=24), now=later)

    assert report.expired_snapshots >= 1 and f"s3://{bucket}/{key}" in report.deleted_files
    assert len(lakehouse.load_table("ads", "ads_archive").metadata.snapshots) == 1
    assert sorted(archived_rows(lakehouse)) == archived
    assert_invariant(pg, lakehouse, loaded)

    restored = restore_date(warehouse, lakehouse, DAY + timedelta(days=1))  # reads the remaining files
    assert restored.restored_rows > 0
    assert_invariant(pg, lakehouse, loaded)
    archive_old_rows(warehouse, lakehouse, retention=timedelta(hours=2), now=NOW, chunk_rows=50)
    assert_invariant(pg, lakehouse, loaded)
