"""Two runs of the same marketing assets at once (the daily schedule and a manual launch, a backfill and
the bootstrap sensor), interleaved at chosen points with events, never sleeps: the published tables
equal those of one run. Each run lands its own raw pages (two API calls, two backups: legitimate).

Regression guards: the merge and the staging sweep already behaved when these tests were written; they
fail with the upsert's LOCK TABLE removed (unique violation) or with a sweep that drops the staging of a
run still in progress (the held run loses its staging table)."""

import threading

import dagster as dg
import pytest

from covid_lakehouse.defs.marketing.assets import AD_PERFORMANCE_KEY, ASSETS, CLEVERTAP_KEY, FACEBOOK_KEY
from covid_lakehouse.defs.marketing.partitions import RANGE_END_TAG, RANGE_START_TAG
from covid_lakehouse.lib.s3 import LakeS3Resource
from covid_lakehouse_dev.apis.harness import MockApi
from covid_lakehouse_dev.apis.marketing import FACEBOOK_PATH
from covid_lakehouse_tests.platform.support import (
    first_call_waits_for_b,
    hold_after_upsert,
    two_runs,
    wait_until_blocked_or_done,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def instance(postgres_instance: dg.DagsterInstance) -> dg.DagsterInstance:
    """The runs here execute at once in threads: they share a PostgreSQL-backed instance, as on a deployment."""
    return postgres_instance
DAY = "2024-07-01"
KEYS = [FACEBOOK_KEY, CLEVERTAP_KEY, AD_PERFORMANCE_KEY]
# Every column but lineage and load times, which name the run and the moment that wrote a row first.
TABLES = {
    "facebook_ad_insights_daily": "account_id, ad_id, date, account_name, account_currency, campaign_id, "
                                  "campaign_name, adset_id, adset_name, ad_name, impressions, clicks, spend, "
                                  "actions::text, account_timezone",
    "clevertap_events": "event_key, occurrence, event_name, event_date, event_ts, profile_object_id, platform, "
                        "app_version, event_props::text, session_props::text, key_version, account_timezone",
    "ad_performance_daily": "platform, account_id, ad_id, date, account_name, campaign_id, campaign_name, "
                            "impressions, clicks, spend, currency, conversions, account_timezone",
}


def published(pg) -> dict[str, list[tuple]]:
    return {t: pg.execute(f"SELECT {cols} FROM marketing.{t} ORDER BY 1, 2, 3, 4").fetchall()
            for t, cols in TABLES.items()}


def raw_objects(s3: LakeS3Resource) -> list[str]:
    listing = s3.get_client().list_objects_v2(Bucket="raw", Prefix="marketing/")
    return sorted(o["Key"] for o in listing.get("Contents", []))


def materialize(resources: dict, instance: dg.DagsterInstance) -> bool:
    """One run; the runs of a test share one instance, as on one deployment (the staging sweep asks it
    which runs are still in progress)."""
    return dg.materialize(ASSETS, selection=KEYS, resources=resources, instance=instance, raise_on_error=False,
                          tags={RANGE_START_TAG: DAY, RANGE_END_TAG: DAY}).success


@pytest.fixture
def one_run(clean_marketing, marketing_resources, pg, s3, instance) -> tuple[dict, int]:
    """The tables and the raw objects of ONE run; then the tables are emptied (they stay, as in a
    deployment: the runs below race on loading, not on creating the tables)."""
    before = len(raw_objects(s3))
    assert materialize(marketing_resources, instance)
    tables, landed = published(pg), len(raw_objects(s3)) - before
    assert all(tables.values()) and landed  # every table has rows to race on
    pg.execute(f"TRUNCATE {', '.join('marketing.' + t for t in TABLES)}")
    return tables, landed


def test_a_run_whose_api_call_waits_until_another_run_published_changes_nothing(
        one_run, marketing_resources, pg, s3, api: MockApi, instance) -> None:
    expected, landed = one_run
    raw_before = len(raw_objects(s3))
    a_waiting, b_finished = threading.Event(), threading.Event()
    # Run A's first Facebook call answers only after run B has published
    api.transform(FACEBOOK_PATH + "/*", first_call_waits_for_b(a_waiting, b_finished))
    results = two_runs(a_waiting, lambda: materialize(marketing_resources, instance), b_finished)

    assert results == {"a": True, "b": True}
    assert published(pg) == expected
    assert len(raw_objects(s3)) - raw_before == 2 * landed  # each run keeps its own backup of its calls


def test_two_runs_merging_at_once_leave_the_rows_of_one(one_run, marketing_resources, pg, monkeypatch, instance) -> None:
    expected, _ = one_run
    a_merging, b_done = threading.Event(), threading.Event()

    def hold() -> None:
        if threading.current_thread().name == "run-a":
            # Hold run A's merge transaction open (its rows not committed) until run B is blocked behind
            # it or has finished: without a lock both runs would insert the same keys.
            a_merging.set()
            wait_until_blocked_or_done(pg, b_done)

    hold_after_upsert(monkeypatch, hold)
    results = two_runs(a_merging, lambda: materialize(marketing_resources, instance), b_done)

    assert results == {"a": True, "b": True}
    assert published(pg) == expected
