"""replay_from_backup rebuilds ads.ads from the raw backups (without resurrecting archived ads), notices
damaged backups; purge_backups applies the backup retention by day."""

from datetime import UTC, date, datetime, timedelta

import pytest

from covid_lakehouse.defs.ads.archive import archive_old_rows
from covid_lakehouse.defs.ads.assets import ads
from covid_lakehouse.defs.ads.backup import BackupError, backup_key, list_backup_keys, purge_backups
from covid_lakehouse.defs.ads.replay import replay_from_backup
from covid_lakehouse_dev.apis.ads import PATH
from covid_lakehouse_tests.ads.support import assert_invariant, live_ids, materialize

pytestmark = pytest.mark.integration

COLUMNS = ("ad_id, ad_group, ad_campaign, ad_campaign_raw, ad_scheme_origin, ad_scheme_approved, shown_at, "
           "backup_key")


def _table(pg) -> set[tuple]:
    return set(pg.execute(f"SELECT {COLUMNS} FROM ads.ads").fetchall())


def test_replay_rebuilds_the_table_without_archived_ads(ads_clean, ads_api, ads_resources, instance, warehouse,
                                                         lakehouse, pg, s3):
    for _ in range(3):
        assert materialize([ads], ads_resources, instance).success
    ads_api.transform(PATH, lambda b: b.replace(b'"brand"', b'"sales"'))  # a run the checks reject
    assert not materialize([ads], ads_resources, instance).success
    ads_api.transform(PATH, None)
    loaded = live_ids(pg)
    [report] = archive_old_rows(warehouse, lakehouse, retention=timedelta(hours=12), now=datetime.now(UTC))
    expected = _table(pg)
    assert report.archived_rows > 0 and len(expected) == len(loaded) - report.archived_rows

    pg.execute("TRUNCATE ads.ads")
    with warehouse.connection() as conn:
        counts = replay_from_backup(conn, s3.get_client(), lakehouse)
    assert (counts.objects, counts.runs, counts.rows) == (4, 4, 400)
    assert counts.rejected_runs == 1
    assert (counts.inserted, counts.skipped_archived) == (len(expected), report.archived_rows)
    assert _table(pg) == expected
    assert_invariant(pg, lakehouse, loaded)

    with warehouse.connection() as conn:  # onto an intact table: nothing changes
        again = replay_from_backup(conn, s3.get_client(), lakehouse)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, len(expected))


def test_replay_refuses_a_damaged_backup(ads_clean, ads_api, ads_resources, instance, warehouse, lakehouse, pg, s3):
    assert materialize([ads], ads_resources, instance).success
    client = s3.get_client()
    [key] = list_backup_keys(client)
    head = client.head_object(Bucket="ad-data", Key=key)
    client.put_object(Bucket="ad-data", Key=key, Body=b"[]", Metadata=head["Metadata"])  # bit rot, same metadata
    before = _table(pg)
    with pytest.raises(BackupError, match="does not match its recorded sha256"), warehouse.connection() as conn:
        replay_from_backup(conn, client, lakehouse)
    assert _table(pg) == before


def test_purge_deletes_only_days_older_than_the_retention(ads_clean, s3):
    client = s3.get_client()
    today = date(2024, 5, 10)
    for days_ago in (0, 6, 7, 8, 30):
        at = datetime(2024, 5, 10, 13, tzinfo=UTC) - timedelta(days=days_ago)
        client.put_object(Bucket="ad-data", Key=backup_key(at, "run", 1), Body=b"[]")
    client.put_object(Bucket="ad-data", Key="backup/README", Body=b"not a backup day")

    assert purge_backups(client, keep_days=7, today=today) == 2
    left = list_backup_keys(client)
    assert [k.split("/")[1] for k in left if "date=" in k] == ["date=2024-05-03", "date=2024-05-04", "date=2024-05-10"]
    assert "backup/README" in left
