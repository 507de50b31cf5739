"""An archive batch left unfinished for longer than the snapshot retention keeps its snapshot: lakehouse
maintenance (expiry past 7 days, orphan removal) never takes what the resume needs, so the resume
neither appends the batch a second time nor loses it; once the batch is done its snapshot is an
ordinary one again."""

from datetime import UTC, datetime, timedelta

import pytest

from covid_lakehouse.defs.ads.archive import ARCHIVE_NAMESPACE, ARCHIVE_TABLE, archive_old_rows
from covid_lakehouse.lib.lakehouse_maintenance import maintain_table
from covid_lakehouse_dev.apis.ads import AdsMock
from covid_lakehouse_tests.ads.support import NOW, archived_rows, assert_invariant, load_rows

pytestmark = pytest.mark.integration

RETENTION = timedelta(hours=12)


class Crash(Exception):
    pass


def crash_after(step: str):
    def hook(done: str) -> None:
        if done == step:
            raise Crash(step)
    return hook


def _maintain(lakehouse, s3, days: int):
    return maintain_table(lakehouse.catalog(), (ARCHIVE_NAMESPACE, ARCHIVE_TABLE), s3.get_client(),
                          retention=timedelta(days=7), margin=timedelta(hours=24),
                          now=datetime.now(UTC) + timedelta(days=days))


@pytest.mark.parametrize("step", ["committed", "verified"])
def test_maintenance_never_expires_the_snapshot_of_an_unfinished_batch(ads_clean, warehouse, lakehouse, pg, s3,
                                                                       step):
    loaded = load_rows(warehouse, AdsMock(seed=21, now=NOW.timestamp), pages=2)
    with pytest.raises(Crash):  # the batch's snapshot is committed, its rows are still live
        archive_old_rows(warehouse, lakehouse, retention=RETENTION, now=NOW, chunk_rows=30, hook=crash_after(step))
    [(batch_id, planned)] = pg.execute("SELECT batch_id::text, planned_rows FROM ads.archive_batches").fetchall()
    # Another commit on top (an operator's fix, a schema change): the batch's snapshot is no longer current.
    table = lakehouse.load_table(ARCHIVE_NAMESPACE, ARCHIVE_TABLE)
    with table.transaction() as tx, tx.update_snapshot().fast_append():
        pass
    batch_snapshot = [s.snapshot_id for s in table.metadata.snapshots
                      if (s.summary or {}).get("ads.archive-batch-id") == batch_id]
    assert len(batch_snapshot) == 1

    report = _maintain(lakehouse, s3, days=30)  # the batch stayed unfinished for a month

    remaining = {s.snapshot_id for s in lakehouse.load_table(ARCHIVE_NAMESPACE, ARCHIVE_TABLE).metadata.snapshots}
    assert batch_snapshot[0] in remaining, "maintenance expired the snapshot an unfinished batch needs"
    assert report.kept_snapshots >= 2
    [resumed] = archive_old_rows(warehouse, lakehouse, retention=RETENTION, now=NOW, chunk_rows=30)
    assert resumed.batch_id == batch_id and resumed.resumed
    assert resumed.archived_rows == planned == resumed.deleted_rows
    assert resumed.snapshot_ids == batch_snapshot
    assert len(archived_rows(lakehouse)) == planned  # appended once, not again by the resume
    assert_invariant(pg, lakehouse, loaded)

    # Done: the tag is gone, so the batch's snapshot now expires like any other.
    refs = lakehouse.load_table(ARCHIVE_NAMESPACE, ARCHIVE_TABLE).metadata.refs
    assert set(refs) == {"main"}
    _maintain(lakehouse, s3, days=60)
    remaining = {s.snapshot_id for s in lakehouse.load_table(ARCHIVE_NAMESPACE, ARCHIVE_TABLE).metadata.snapshots}
    assert batch_snapshot[0] not in remaining
    assert len(archived_rows(lakehouse)) == planned
    assert_invariant(pg, lakehouse, loaded)
