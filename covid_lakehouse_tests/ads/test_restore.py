"""restore_date: archived ads of one shown date move back to ads.ads and out of the archive's live
snapshot, idempotently and safely across a crash between the two; archiving again duplicates nothing;
an ad seen again after it was archived is a new live row, kept apart from its archived copy."""

import subprocess
import sys
from datetime import date, timedelta

import pytest

from covid_lakehouse.defs.ads.archive import ArchiveBusyError, archive_old_rows, restore_date
from covid_lakehouse.runtime import REPO_ROOT
from covid_lakehouse_dev.apis.ads import AdsMock
from covid_lakehouse_tests.ads.support import NOW, archived_rows, assert_invariant, live_ids, load_rows

pytestmark = pytest.mark.integration

RETENTION = timedelta(hours=2)  # archives ads shown on both 2024-05-01 and 2024-05-02
DAY = date(2024, 5, 1)


@pytest.fixture
def archived(ads_clean, warehouse, lakehouse, pg) -> set[str]:
    loaded = load_rows(warehouse, AdsMock(seed=5, now=NOW.timestamp), pages=2)
    archive_old_rows(warehouse, lakehouse, retention=RETENTION, now=NOW, chunk_rows=50)
    return loaded


def _shown_on(pg, ids: set[str], day: date) -> set[str]:
    rows = pg.execute("SELECT ad_id::text FROM ads.ads WHERE (shown_at AT TIME ZONE 'UTC')::date = %s", (day,))
    return {r[0] for r in rows} & ids


def _archived_on(lakehouse, day: date) -> set[str]:
    table = lakehouse.load_table("ads", "ads_archive")
    data = table.scan(row_filter=f"shown_date = '{day.isoformat()}'", selected_fields=("ad_id",)).to_arrow()
    return set(data["ad_id"].to_pylist())


def test_restore_moves_one_day_back_and_is_idempotent(archived, warehouse, lakehouse, pg):
    on_day = _archived_on(lakehouse, DAY)
    other_day = _archived_on(lakehouse, DAY + timedelta(days=1))
    assert on_day and other_day

    report = restore_date(warehouse, lakehouse, DAY)
    assert (report.archived_rows, report.restored_rows, report.removed_from_archive, report.kept_in_archive) == (
        len(on_day), len(on_day), len(on_day), 0)
    assert on_day <= live_ids(pg) and _shown_on(pg, on_day, DAY) == on_day
    assert _archived_on(lakehouse, DAY) == set()
    assert _archived_on(lakehouse, DAY + timedelta(days=1)) == other_day  # other partitions untouched
    assert_invariant(pg, lakehouse, archived)

    again = restore_date(warehouse, lakehouse, DAY)
    assert (again.archived_rows, again.restored_rows, again.removed_from_archive) == (0, 0, 0)
    assert_invariant(pg, lakehouse, archived)


def test_restored_values_match_what_was_archived(archived, warehouse, lakehouse, pg):
    table = lakehouse.load_table("ads", "ads_archive")
    copies = {r["ad_id"]: r for r in table.scan(row_filter=f"shown_date = '{DAY.isoformat()}'").to_arrow().to_pylist()}
    restore_date(warehouse, lakehouse, DAY)
    for ad_id, ad_group, campaign, raw, origin, approved, shown_at, key, loaded_at, version in pg.execute(
            "SELECT ad_id::text, ad_group, ad_campaign, ad_campaign_raw, ad_scheme_origin, ad_scheme_approved, "
            "shown_at, backup_key, loaded_at, row_version FROM ads.ads WHERE ad_id = ANY(%s::uuid[])",
            (list(copies),)):
        copy = copies[ad_id]
        assert (ad_group, campaign, raw, origin, approved, shown_at, key, loaded_at) == (
            copy["ad_group"], copy["ad_campaign"], copy["ad_campaign_raw"], copy["ad_scheme_origin"],
            copy["ad_scheme_approved"], copy["shown_at"], copy["backup_key"], copy["loaded_at"])
        assert version > copy["row_version"]  # a new version: a stale archive plan can never delete it


def test_restore_killed_between_postgres_insert_and_archive_delete(archived, warehouse, lakehouse, pg):
    on_day = _archived_on(lakehouse, DAY)
    worker = subprocess.run([sys.executable, "-m", "covid_lakehouse_tests.ads.support", "restore", "restored",
                             DAY.isoformat()], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert worker.returncode == -9, worker.stderr[-2000:]
    assert on_day <= live_ids(pg) and _archived_on(lakehouse, DAY) == on_day  # briefly in both places

    report = restore_date(warehouse, lakehouse, DAY)
    assert (report.restored_rows, report.removed_from_archive) == (0, len(on_day))  # repaired, not re-inserted
    assert_invariant(pg, lakehouse, archived)


def test_restore_then_archive_again_duplicates_nothing(archived, warehouse, lakehouse, pg):
    total_archived = len(archived_rows(lakehouse))
    restore_date(warehouse, lakehouse, DAY)
    [report] = archive_old_rows(warehouse, lakehouse, retention=RETENTION, now=NOW)
    assert report.archived_rows == report.deleted_rows == len(_archived_on(lakehouse, DAY))
    assert len(archived_rows(lakehouse)) == total_archived
    assert_invariant(pg, lakehouse, archived)


def test_restore_waits_for_an_unfinished_archive_batch(ads_clean, warehouse, lakehouse, pg):
    load_rows(warehouse, AdsMock(seed=6, now=NOW.timestamp))

    def stop(step: str) -> None:
        if step == "committed":
            raise RuntimeError("stopped")

    with pytest.raises(RuntimeError):
        archive_old_rows(warehouse, lakehouse, retention=RETENTION, now=NOW, hook=stop)
    with pytest.raises(ArchiveBusyError, match="unfinished.*run the ad_archive job"):
        restore_date(warehouse, lakehouse, DAY)


def test_ad_seen_again_after_archiving_is_a_new_live_row_kept_apart(archived, warehouse, lakehouse, pg):
    # The API serves the same 200 ads again (same seed and clock): the archived ones come back as new rows.
    load_rows(warehouse, AdsMock(seed=5, now=NOW.timestamp), pages=2, key="backup/again.json")
    on_day = _archived_on(lakehouse, DAY)
    assert on_day <= live_ids(pg)
    seen_again = pg.execute("SELECT count(*) FROM ads.ads WHERE ad_id = ANY(%s::uuid[]) AND backup_key = %s",
                            (list(on_day), "backup/again.json")).fetchone()[0]
    assert seen_again == len(on_day)

    report = restore_date(warehouse, lakehouse, DAY)  # the live rows are newer: the archive keeps its copies
    assert (report.restored_rows, report.removed_from_archive, report.kept_in_archive) == (0, 0, len(on_day))
    assert _archived_on(lakehouse, DAY) == on_day
