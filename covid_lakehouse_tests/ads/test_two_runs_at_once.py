"""Two ads runs at once (schedule + manual launch, a retry overlapping the next run), interleaved at
chosen points with events, never sleeps: the published ads.ads and the archive end exactly as the same
runs one after the other would leave them (in the order they called the API); each run's API call
keeps its own raw backup.

The interleavings: a load stopped inside its API call while a second load, or the archive, starts; an
archive stopped after its plan while a second archive starts."""

import json
import threading
from collections.abc import Iterator
from datetime import timedelta

import dagster as dg
import psycopg
import pytest

from covid_lakehouse.defs.ads.archive import archive_old_rows
from covid_lakehouse.defs.ads.assets import ads
from covid_lakehouse.defs.ads.backup import list_backup_keys
from covid_lakehouse_dev.apis.ads import PATH, AdsMock
from covid_lakehouse_dev.apis.harness import MockApi, MockResponse
from covid_lakehouse_tests.ads.support import NOW, archived_rows, assert_invariant, live_ids, load_rows

pytestmark = pytest.mark.integration

WAIT = 60  # seconds an event may take before the test fails (a hang, not a timing assumption)


class ServedTwice:
    """The ad API re-showing the same ads with a new campaign on every call; the first call blocks
    until released, so a run can be held inside its fetch while another run starts."""

    def __init__(self, ads: list[dict]) -> None:
        self.ads = ads
        self.calls = 0
        self.first_call_started = threading.Event()
        self.release_first_call = threading.Event()
        self._lock = threading.Lock()

    def campaign(self, call: int) -> int:
        return 500 + call

    def handle(self, _request) -> MockResponse:
        with self._lock:
            self.calls += 1
            call = self.calls
        if call == 1:
            self.first_call_started.set()
            assert self.release_first_call.wait(WAIT)
        return MockResponse(200, json.dumps([{**ad, "ad_campaign": self.campaign(call)} for ad in self.ads]).encode())


@pytest.fixture
def served(monkeypatch) -> Iterator[tuple[MockApi, ServedTwice]]:
    with MockApi() as api:
        source = ServedTwice(AdsMock(seed=41, now=NOW.timestamp).ads(20))
        api.route("GET", PATH, source.handle)
        monkeypatch.setenv("ADS_API_URL", api.url + PATH)
        yield api, source


def _in_thread(fn) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run() -> None:
        try:
            out["result"] = fn()
        except BaseException as err:  # re-raised by the test's assertions
            out["error"] = err
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _load(resources: dict) -> dg.ExecuteInProcessResult:
    with dg.DagsterInstance.ephemeral() as instance:
        return dg.materialize([ads], resources=resources, instance=instance, raise_on_error=False)


def _waiting_for_the_ads_lock_or_done(pg: psycopg.Connection, thread: threading.Thread) -> None:
    """Return once the second run either finished or queues for the ads advisory lock (the point
    where, unlocked, it would overtake the first)."""
    while thread.is_alive():
        waiting = pg.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").fetchone()[0]
        if waiting:
            return
        thread.join(0.02)


def test_two_loads_at_once_publish_in_the_order_they_fetched(ads_clean, served, ads_resources, pg, s3):
    _, source = served
    first, first_out = _in_thread(lambda: _load(ads_resources))
    assert source.first_call_started.wait(WAIT)  # the first run is inside its API call
    second, second_out = _in_thread(lambda: _load(ads_resources))
    _waiting_for_the_ads_lock_or_done(pg, second)
    source.release_first_call.set()
    first.join(WAIT)
    second.join(WAIT)
    assert first_out["result"].success and second_out["result"].success

    # One after the other, the second call's values win: an older response never overwrites a newer.
    rows = pg.execute("SELECT ad_id::text, ad_campaign FROM ads.ads").fetchall()
    assert len(rows) == len(source.ads)
    assert {campaign for _, campaign in rows} == {source.campaign(2)}
    assert len(list_backup_keys(s3.get_client())) == 2  # one backup per API call, both kept


def test_an_archive_during_a_load_never_leaves_an_ad_live_and_archived(ads_clean, served, ads_resources,
                                                                       warehouse, lakehouse, pg):
    _, source = served
    # The ads are already in ads.ads (loaded earlier); a month later every one is due for the archive.
    loaded = load_rows(warehouse, AdsMock(seed=41, now=NOW.timestamp), pages=1)
    assert {ad["ad_id"] for ad in source.ads} <= loaded

    load, load_out = _in_thread(lambda: _load(ads_resources))
    assert source.first_call_started.wait(WAIT)  # the load has fetched nothing yet
    archive, archive_out = _in_thread(lambda: archive_old_rows(
        warehouse, lakehouse, retention=timedelta(days=1), now=NOW + timedelta(days=30), chunk_rows=30))
    _waiting_for_the_ads_lock_or_done(pg, archive)
    source.release_first_call.set()
    load.join(WAIT)
    archive.join(WAIT)
    assert load_out["result"].success and "error" not in archive_out

    # As one after the other: the load updated the ads (a new campaign), then the archive moved them.
    assert_invariant(pg, lakehouse, loaded)
    live = live_ids(pg)
    assert live.isdisjoint(ad["ad_id"] for ad in source.ads)
    [report] = archive_out["result"]
    assert report.archived_rows == report.deleted_rows == len(loaded)
    in_archive = lakehouse.load_table("ads", "ads_archive").scan(selected_fields=("ad_id", "ad_campaign")).to_arrow()
    campaigns = dict(zip(in_archive["ad_id"].to_pylist(), in_archive["ad_campaign"].to_pylist(), strict=True))
    assert {campaigns[ad["ad_id"]] for ad in source.ads} == {source.campaign(1)}


def test_two_archives_at_once_archive_each_row_once(ads_clean, warehouse, lakehouse, pg):
    loaded = load_rows(warehouse, AdsMock(seed=43, now=NOW.timestamp), pages=3)
    planned, release = threading.Event(), threading.Event()

    def hold_after_plan(step: str) -> None:
        if step == "planned":
            planned.set()
            assert release.wait(WAIT)

    first, first_out = _in_thread(lambda: archive_old_rows(
        warehouse, lakehouse, retention=timedelta(hours=12), now=NOW, chunk_rows=40, hook=hold_after_plan))
    assert planned.wait(WAIT)
    second, second_out = _in_thread(lambda: archive_old_rows(
        warehouse, lakehouse, retention=timedelta(hours=12), now=NOW, chunk_rows=40))
    _waiting_for_the_ads_lock_or_done(pg, second)
    release.set()
    first.join(WAIT)
    second.join(WAIT)
    assert "error" not in first_out and "error" not in second_out

    [report] = first_out["result"]
    assert second_out["result"] == []  # nothing left to archive once the first finished
    live, archived = assert_invariant(pg, lakehouse, loaded)
    assert archived == report.archived_rows == report.planned_rows > 0
    assert len({batch for _, _, batch in archived_rows(lakehouse)}) == 1
