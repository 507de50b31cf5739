"""Replay after an archive whose plan and delete had a load in between (real PostgreSQL, S3, Iceberg):
the rebuilt ads.ads equals the table before the replay, and every ad is live or archived, never both.
The load runs inside the archive at the chosen step (the archive's hook), not after a sleep."""

import contextlib
import json
from datetime import UTC, datetime, timedelta

import pytest

from covid_lakehouse.defs.ads import assets as ads_assets
from covid_lakehouse.defs.ads.archive import ArchiveBusyError, archive_old_rows
from covid_lakehouse.defs.ads.assets import ads
from covid_lakehouse.defs.ads.replay import replay_from_backup
from covid_lakehouse_dev.apis.ads import PATH, AdsMock
from covid_lakehouse_dev.apis.harness import MockApi, MockResponse
from covid_lakehouse_tests.ads.support import assert_invariant, live_ids, materialize

pytestmark = pytest.mark.integration

RETENTION = timedelta(hours=12)
COLUMNS = ("ad_id, ad_group, ad_campaign, ad_campaign_raw, ad_scheme_origin, ad_scheme_approved, shown_at, "
           "backup_key")


@pytest.fixture
def fixed_api(monkeypatch):
    """The ad API answering the same 100 ads on every call (``api.body`` can be replaced)."""
    with MockApi() as api:
        api.ads = AdsMock(seed=21).ads()
        api.route("GET", PATH, lambda _request: MockResponse(200, json.dumps(api.ads).encode()))
        monkeypatch.setenv("ADS_API_URL", api.url + PATH)
        yield api


def _table(pg) -> set[tuple]:
    return set(pg.execute(f"SELECT {COLUMNS} FROM ads.ads").fetchall())


def _old(api) -> list[str]:
    cutoff = datetime.now(UTC).timestamp() - RETENTION.total_seconds()
    return sorted(ad["ad_id"] for ad in api.ads if ad["shown_at"] < cutoff)


def _archive_with_a_load_in_between(fixed_api, ads_resources, instance, warehouse, lakehouse, monkeypatch,
                                    at: str, change=None):
    def load_in_between(step: str) -> None:
        # The archive planned (or wrote) its batch; a load lands before its delete. Loads now wait for
        # the archive (the ads lock): this is a history recorded before they did, which replay must
        # still rebuild exactly. So the load here is the real one with the lock taken out.
        if step == at:
            if change:
                change(fixed_api.ads)
            with monkeypatch.context() as patch:
                patch.setattr(ads_assets, "exclusive_connection", lambda _dsn, _wait: contextlib.nullcontext())
                assert materialize([ads], ads_resources, instance).success

    return archive_old_rows(warehouse, lakehouse, retention=RETENTION, now=datetime.now(UTC), hook=load_in_between)


@pytest.mark.parametrize("at", ["planned", "committed"])
def test_a_sighting_between_plan_and_delete_stays_archived_after_replay(ads_clean, fixed_api, ads_resources,
                                                                        instance, warehouse, lakehouse, pg, s3,
                                                                        monkeypatch, at):
    assert materialize([ads], ads_resources, instance).success
    loaded = live_ids(pg)
    old = _old(fixed_api)
    [report] = _archive_with_a_load_in_between(fixed_api, ads_resources, instance, warehouse, lakehouse, monkeypatch,
                                               at)
    assert report.deleted_rows == len(old) > 0  # the second sighting changed nothing: the rows left
    expected = _table(pg)
    assert_invariant(pg, lakehouse, loaded)

    pg.execute("TRUNCATE ads.ads")
    with warehouse.connection() as conn:
        counts = replay_from_backup(conn, s3.get_client(), lakehouse)

    assert counts.runs == 2
    assert _table(pg) == expected
    assert_invariant(pg, lakehouse, loaded)


def test_a_change_between_plan_and_delete_stays_live_after_replay(ads_clean, fixed_api, ads_resources, instance,
                                                                  warehouse, lakehouse, pg, s3, monkeypatch):
    assert materialize([ads], ads_resources, instance).success
    old = _old(fixed_api)

    def change_one(ads_list):  # the API reports one old ad differently
        for ad in ads_list:
            if ad["ad_id"] == old[0]:
                ad["ad_group"] = "brand" if ad["ad_group"] != "brand" else "marketing"

    # after the archive's commit: the old version is archived, the new one stays live (kept)
    [report] = _archive_with_a_load_in_between(fixed_api, ads_resources, instance, warehouse, lakehouse, monkeypatch,
                                               "committed", change=change_one)
    assert (report.deleted_rows, report.kept_rows) == (len(old) - 1, 1)
    expected = _table(pg)
    assert old[0] in live_ids(pg)

    pg.execute("TRUNCATE ads.ads")
    with warehouse.connection() as conn:
        replay_from_backup(conn, s3.get_client(), lakehouse)
    assert _table(pg) == expected


def test_replay_refuses_while_an_archive_batch_is_unfinished(ads_clean, fixed_api, ads_resources, instance,
                                                             warehouse, lakehouse, pg, s3):
    assert materialize([ads], ads_resources, instance).success

    def crash(step: str) -> None:
        if step == "committed":
            raise RuntimeError("crashed after the archive commit")

    with pytest.raises(RuntimeError, match="crashed"):
        archive_old_rows(warehouse, lakehouse, retention=RETENTION, now=datetime.now(UTC), hook=crash)
    before = _table(pg)
    with pytest.raises(ArchiveBusyError, match="unfinished"), warehouse.connection() as conn:
        replay_from_backup(conn, s3.get_client(), lakehouse)
    assert _table(pg) == before
