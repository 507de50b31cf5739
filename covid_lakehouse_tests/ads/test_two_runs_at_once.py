"""Two ads runs at once (schedule + manual launch, a retry overlapping the next run), interleaved at
chosen points with events, never sleeps: the published ads.ads and the archive end exactly as the same
runs one after the other would leave them (in the order they called the API); each run's API call
keeps its own raw backup.

The interleavings: a load stopped inside its API call while a second load, or the archive, starts; an
archive stopped after its plan while a second archive starts."""

import json
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta

import dagster as dg
import pytest

from covid_lakehouse.defs.ads.archive import archive_old_rows
from covid_lakehouse.defs.ads.assets import ads
from covid_lakehouse.defs.ads.backup import list_backup_keys
from covid_lakehouse_dev.apis.ads import PATH, AdsMock
from covid_lakehouse_dev.apis.harness import MockApi, MockResponse
from covid_lakehouse_tests.ads.support import NOW, archived_rows, assert_invariant, live_ids, load_rows
from covid_lakehouse_tests.platform.support import two_runs, wait_until_blocked_or_done

pytestmark = pytest.mark.integration


class ServedTwice:
    """The ad API re-showing the same ads with a new campaign on every call; the first call runs
    ``hold_first_call`` (set by the test) before answering, so a run can be held inside its fetch while
    another run starts."""

    def __init__(self, ads: list[dict]) -> None:
        self.ads = ads
        self.calls = 0
        self.first_call_started = threading.Event()
        self.hold_first_call: Callable[[], None] = lambda: None
        self._lock = threading.Lock()

    def campaign(self, call: int) -> int:
        return 500 + call

    def handle(self, _request) -> MockResponse:
        with self._lock:
            self.calls += 1
            call = self.calls
        if call == 1:
            self.first_call_started.set()
            self.hold_first_call()
        return MockResponse(200, json.dumps([{**ad, "ad_campaign": self.campaign(call)} for ad in self.ads]).encode())


@pytest.fixture
def served(monkeypatch) -> Iterator[tuple[MockApi, ServedTwice]]:
    with MockApi() as api:
        source = ServedTwice(AdsMock(seed=41, now=NOW.timestamp).ads(20))
        api.route("GET", PATH, source.handle)
        monkeypatch.setenv("ADS_API_URL", api.url + PATH)
        yield api, source


def _load(resources: dict) -> dg.ExecuteInProcessResult:
    with dg.DagsterInstance.ephemeral() as instance:
        return dg.materialize([ads], resources=resources, instance=instance, raise_on_error=False)


def test_two_loads_at_once_publish_in_the_order_they_fetched(ads_clean, served, ads_resources, pg, s3):
    _, source = served
    # Run A is held inside its API call until run B queues behind its ads lock (where, unlocked, B
    # would overtake A) or has finished.
    second_done = threading.Event()
    source.hold_first_call = lambda: wait_until_blocked_or_done(pg, second_done)
    results = two_runs(source.first_call_started, lambda: _load(ads_resources), second_done)
    assert results["a"].success and results["b"].success

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

    # The load is held inside its API call (it has fetched nothing yet) until the archive queues behind
    # its ads lock or has finished; an error of either is raised by two_runs.
    archive_done = threading.Event()
    source.hold_first_call = lambda: wait_until_blocked_or_done(pg, archive_done)
    results = two_runs(source.first_call_started, lambda: _load(ads_resources), archive_done,
                       run_b=lambda: archive_old_rows(warehouse, lakehouse, retention=timedelta(days=1),
                                                      now=NOW + timedelta(days=30), chunk_rows=30))
    assert results["a"].success

    # As one after the other: the load updated the ads (a new campaign), then the archive moved them.
    assert_invariant(pg, lakehouse, loaded)
    live = live_ids(pg)
    assert live.isdisjoint(ad["ad_id"] for ad in source.ads)
    [report] = results["b"]
    assert report.archived_rows == report.deleted_rows == len(loaded)
    in_archive = lakehouse.load_table("ads", "ads_archive").scan(selected_fields=("ad_id", "ad_campaign")).to_arrow()
    campaigns = dict(zip(in_archive["ad_id"].to_pylist(), in_archive["ad_campaign"].to_pylist(), strict=True))
    assert {campaigns[ad["ad_id"]] for ad in source.ads} == {source.campaign(1)}


def test_two_archives_at_once_archive_each_row_once(ads_clean, warehouse, lakehouse, pg):
    loaded = load_rows(warehouse, AdsMock(seed=43, now=NOW.timestamp), pages=3)
    planned, second_done = threading.Event(), threading.Event()

    def hold_after_plan(step: str) -> None:
        # The first archive is held after its plan until the second queues behind its ads lock or has finished.
        if step == "planned":
            planned.set()
            wait_until_blocked_or_done(pg, second_done)

    def archive(**hook) -> list:
        return archive_old_rows(warehouse, lakehouse, retention=timedelta(hours=12), now=NOW, chunk_rows=40, **hook)

    # An error of either archive is raised by two_runs.
    results = two_runs(planned, lambda: archive(hook=hold_after_plan), second_done, run_b=archive)

    [report] = results["a"]
    assert results["b"] == []  # nothing left to archive once the first finished
    live, archived = assert_invariant(pg, lakehouse, loaded)
    assert archived == report.archived_rows == report.planned_rows > 0
    assert len({batch for _, _, batch in archived_rows(lakehouse)}) == 1
