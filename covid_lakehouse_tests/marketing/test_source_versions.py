"""Look-back runs committing out of order: a day's restated Facebook values, or an RDS row's update, never
go back to older ones.

Run A reads days D1..D2 from the API, then is slow to publish; run B reads D2 after Facebook restated it
and publishes first. When A merges, D2 must keep B's (newer) values, while D1, which only A fetched, is
merged. Real PostgreSQL and S3; the Facebook API is the local mock.
"""

import threading
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from covid_lakehouse.defs.marketing import assets
from covid_lakehouse.defs.marketing.assets import ASSETS, FACEBOOK_KEY, RDS_ORDERS_KEY
from covid_lakehouse.defs.marketing.load import StreamingMerge
from covid_lakehouse.defs.marketing.partitions import RANGE_END_TAG, RANGE_START_TAG
from covid_lakehouse_dev.apis.marketing import MarketingMock
from covid_lakehouse_tests.platform.support import run_a_held

pytestmark = pytest.mark.integration


@pytest.fixture
def instance(postgres_instance: dg.DagsterInstance) -> dg.DagsterInstance:
    """The runs here execute at once in threads: they share a PostgreSQL-backed instance, as on a deployment."""
    return postgres_instance
D1, D2 = "2024-07-01", "2024-07-02"
ACCOUNTS = ["798085168510957", "798085168510958"]


def rows(pg, day: str) -> list[tuple]:
    return pg.execute("SELECT account_id, ad_id, actions::text, raw_object, updated_at FROM marketing.facebook_ad_insights_daily "
                      "WHERE date = %s ORDER BY 1, 2", (day,)).fetchall()


def facebook_run(resources: dict, instance: dg.DagsterInstance, first: str, last: str) -> dg.ExecuteInProcessResult:
    return dg.materialize(ASSETS, selection=[FACEBOOK_KEY], resources=resources, instance=instance,
                          raise_on_error=False, tags={RANGE_START_TAG: first, RANGE_END_TAG: last})


def test_a_run_that_fetched_a_day_earlier_and_publishes_last_leaves_that_day_alone(
        clean_marketing, marketing_resources, instance, pg, mock: MarketingMock, monkeypatch) -> None:
    a_read, a_fetched_d2, b_done = threading.Event(), threading.Event(), threading.Event()
    a_runs, a_d2 = set(), set()  # run A's SliceVersions (the one run that fetches D1); its D2 accounts
    real_fetching, real_begin = assets.SliceVersions.fetching, StreamingMerge.begin

    def fetching(self, unit, day):
        real_fetching(self, unit, day)
        if day.isoformat() == D1:
            a_runs.add(id(self))
        elif id(self) in a_runs:
            a_d2.add(unit)
            if a_d2 == set(ACCOUNTS):
                a_fetched_d2.set()

    def merge_after_b(self):  # run A has fetched both days; it starts merging (takes the lock) after run B
        if id(self.versions) in a_runs:
            assert a_fetched_d2.wait(120), "run A never fetched D2"
            a_read.set()
            assert b_done.wait(120), "run B never finished"
        real_begin(self)

    monkeypatch.setattr(assets.SliceVersions, "fetching", fetching)
    monkeypatch.setattr(StreamingMerge, "begin", merge_after_b)

    def run(first: str, last: str) -> dg.ExecuteInProcessResult:
        return facebook_run(marketing_resources, instance, first, last)

    with run_a_held(lambda: run(D1, D2), a_read, b_done) as results:
        mock.facebook_revision = 1  # Facebook restates conversions inside its attribution window
        newer = run(D2, D2)
        restated = rows(pg, D2)  # run B's D2, before run A merges
    assert newer.success and restated
    older = results["a"]
    assert older.success  # not an error: the day simply keeps the newer pages

    assert rows(pg, D2) == restated  # A's older D2 pages merged nothing: values, lineage and updated_at kept
    assert len(rows(pg, D1)) == 6 and all(f"/date={D1}/{older.run_id}-" in r[3] for r in rows(pg, D1))
    [meta] = [m.metadata for m in older.asset_materializations_for_node(FACEBOOK_KEY.to_python_identifier())][:1]
    superseded = meta["superseded_slices"].value
    assert sorted(superseded) == [f"{a} {D2}" for a in ACCOUNTS]
    assert all(v.startswith(f"superseded by facebook pages of run {newer.run_id}") for v in superseded.values())
    versions = pg.execute("SELECT unit, day::text, source_version FROM marketing.source_versions "
                          "WHERE source = 'facebook_ad_insights_daily' ORDER BY 2, 1").fetchall()
    assert versions == [(a, D1, f"facebook pages of run {older.run_id}") for a in ACCOUNTS] + \
        [(a, D2, f"facebook pages of run {newer.run_id}") for a in ACCOUNTS]


def test_a_run_that_started_first_but_fetched_a_day_last_publishes_that_day(
        clean_marketing, marketing_resources, instance, pg, mock: MarketingMock, monkeypatch) -> None:
    """A slice's version is when its own pages were fetched, not when the run started: run A starts first
    and reads D1, run B reads and publishes D2, then Facebook restates D2 and A fetches it. A's D2 is the
    newer one and is merged (with the run's start time as every slice's version, it would be refused)."""
    a_slices, a_at_d2, b_done = set(), threading.Event(), threading.Event()
    real, real_begin = assets.SliceVersions.fetching, StreamingMerge.begin

    def fetch_d2_after_b(self, unit, day):  # run A is the one that fetched D1; it fetches D2 after run B
        if day.isoformat() == D1:
            a_slices.add(id(self))
        elif id(self) in a_slices:
            a_at_d2.set()
            assert b_done.wait(120), "run B never finished"
        real(self, unit, day)

    def merge_after_b(self):  # run A merges (takes the table's lock) after run B published
        if id(self.versions) in a_slices:
            assert b_done.wait(120), "run B never finished"
        real_begin(self)

    monkeypatch.setattr(assets.SliceVersions, "fetching", fetch_d2_after_b)
    monkeypatch.setattr(StreamingMerge, "begin", merge_after_b)

    def run(first: str, last: str) -> dg.ExecuteInProcessResult:
        return facebook_run(marketing_resources, instance, first, last)

    with run_a_held(lambda: run(D1, D2), a_at_d2, b_done) as results:
        earlier = run(D2, D2)
        mock.facebook_revision = 1  # Facebook restates D2 before run A fetches it
    later = results["a"]
    assert earlier.success and later.success

    # the restated rows come from run A's pages (rows Facebook did not restate keep run B's lineage)
    assert len(rows(pg, D2)) == 6 and any(f"/date={D2}/{later.run_id}-" in r[3] for r in rows(pg, D2))
    [meta] = [m.metadata for m in later.asset_materializations_for_node(FACEBOOK_KEY.to_python_identifier())][:1]
    assert "superseded_slices" not in meta
    versions = pg.execute("SELECT DISTINCT source_version FROM marketing.source_versions "
                          "WHERE source = 'facebook_ad_insights_daily' AND day = %s", (D2,)).fetchall()
    assert versions == [(f"facebook pages of run {later.run_id}",)]


def test_an_rds_run_that_read_a_row_before_its_update_and_merges_last_keeps_the_update(
        clean_marketing, rds_demo_source, marketing_resources, instance, pg, monkeypatch) -> None:
    """RDS rows carry their version (updated_at): run A reads yesterday, run B reads it again after the app
    refunded an order and merges first; A's older copy of that order must not come back."""
    last = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    order_id, updated_at = pg.execute(
        "SELECT id, updated_at FROM marketing_rds_source.orders WHERE updated_at >= %s AND updated_at < %s "
        "AND status <> 'refunded' ORDER BY updated_at LIMIT 1", (last, last + timedelta(days=1))).fetchone()
    a_read, b_done = threading.Event(), threading.Event()
    real = assets.stage_audit_publish

    def publish_after_b(*args, **kwargs):
        if threading.current_thread().name == "run-a" and kwargs.get("asset_key") == RDS_ORDERS_KEY:
            a_read.set()
            assert b_done.wait(120), "run B never finished"
        return (yield from real(*args, **kwargs))

    monkeypatch.setattr(assets, "stage_audit_publish", publish_after_b)

    def run() -> dg.ExecuteInProcessResult:
        return dg.materialize(ASSETS, selection=[RDS_ORDERS_KEY], resources=marketing_resources, instance=instance,
                              raise_on_error=False, tags={RANGE_START_TAG: f"{last:%Y-%m-%d}",
                                                          RANGE_END_TAG: f"{last:%Y-%m-%d}"})

    with run_a_held(run, a_read, b_done) as results:
        refunded_at = updated_at + timedelta(seconds=1)  # the app refunds the order, the same day
        pg.execute("UPDATE marketing_rds_source.orders SET status = 'refunded', updated_at = %s WHERE id = %s",
                   (refunded_at, order_id))
        newer = run()
    assert newer.success and results["a"].success
    assert pg.execute("SELECT status, source_updated_at FROM marketing.rds_orders WHERE order_id = %s",
                      (order_id,)).fetchone() == ("refunded", refunded_at)
    [meta] = [m.metadata for m in results["a"].asset_materializations_for_node(RDS_ORDERS_KEY.to_python_identifier())][:1]
    assert meta["rows_left_out_as_older"].value == 1
