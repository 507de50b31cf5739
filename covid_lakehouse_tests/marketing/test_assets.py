"""The marketing assets end to end on the real warehouse and S3, against the mock APIs: range runs over
the look-back window, merges without duplicates, raw pages, blocking and WARN checks, schema changes,
the schedule, the bootstrap sensor, and the demo procedure."""

import io
import json
import tarfile
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import dagster as dg
import psycopg
import pytest

from covid_lakehouse.defs.marketing.assets import (
    AD_PERFORMANCE_KEY,
    ASSETS,
    CLEVERTAP_KEY,
    FACEBOOK_KEY,
    GOOGLE_ADS_KEY,
    RDS_CUSTOMERS_KEY,
    RDS_ORDERS_KEY,
    ApiAssetConfig,
)
from covid_lakehouse.defs.marketing.definitions import defs as marketing_defs
from covid_lakehouse.defs.marketing.partitions import RANGE_END_TAG, RANGE_START_TAG
from covid_lakehouse.defs.marketing.schedules import marketing_daily
from covid_lakehouse.defs.marketing.sensors import marketing_bootstrap
from covid_lakehouse.lib.resources import platform_resources
from covid_lakehouse.lib.s3 import LakeS3Resource
from covid_lakehouse_dev.apis.harness import MockApi
from covid_lakehouse_dev.apis.marketing import FACEBOOK_PATH, MarketingMock, change_schema

pytestmark = pytest.mark.integration
ACCOUNTS = ("798085168510957", "798085168510958")


def materialize(keys, first: str, last: str, resources: dict, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return dg.materialize(ASSETS, selection=keys, resources=resources, instance=instance, raise_on_error=False,
                          tags={RANGE_START_TAG: first, RANGE_END_TAG: last})


def metadata(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict:
    [first, *_] = [m for m in result.asset_materializations_for_node(key.to_python_identifier())]
    return {k: v.value for k, v in first.metadata.items()}


def checks(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
    return {(e.asset_key.path[-1], e.check_name): e for e in result.get_asset_check_evaluations()}


def raw_keys(s3: LakeS3Resource, prefix: str) -> list[str]:
    listing = s3.get_client().list_objects_v2(Bucket="raw", Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def raw_members(s3: LakeS3Resource, key: str) -> dict[str, bytes]:
    body = s3.get_client().get_object(Bucket="raw", Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def test_lookback_rerun_merges_late_attribution_without_duplicates(
        clean_marketing, marketing_resources, instance, pg: psycopg.Connection, mock: MarketingMock, s3) -> None:
    first = materialize([FACEBOOK_KEY, AD_PERFORMANCE_KEY], "2024-07-01", "2024-07-03", marketing_resources, instance)
    assert first.success
    assert {e.partition for e in first.get_asset_materialization_events()
            if e.asset_key == FACEBOOK_KEY} == {"2024-07-01", "2024-07-02", "2024-07-03"}
    assert metadata(first, FACEBOOK_KEY)["inserted"] == 18  # 2 accounts x 3 ads x 3 days
    assert metadata(first, FACEBOOK_KEY)["pages"] == 12  # pages of 2 rows: 2 per account and day

    mock.facebook_revision = 1  # Facebook restates conversions inside its attribution window
    second = materialize([FACEBOOK_KEY, AD_PERFORMANCE_KEY], "2024-07-02", "2024-07-05", marketing_resources, instance)
    assert second.success
    meta = metadata(second, FACEBOOK_KEY)
    assert meta["inserted"] == 12 and meta["updated"] > 0 and meta["updated"] + meta["unchanged"] == 12

    assert pg.execute("SELECT count(*), count(DISTINCT (account_id, ad_id, date)) FROM marketing.facebook_ad_insights_daily"
                      ).fetchone() == (30, 30)
    assert pg.execute("SELECT count(*), count(DISTINCT (platform, account_id, ad_id, date)) FROM marketing.ad_performance_daily"
                      ).fetchone() == (30, 30)
    day = date(2024, 7, 2)
    restated = sum(int(next(a["value"] for a in r["actions"] if a["action_type"] == "offsite_conversion.fb_pixel_purchase"))
                   for account in ACCOUNTS for r in mock.facebook_rows(account, day))
    assert pg.execute("SELECT sum(conversions) FROM marketing.ad_performance_daily WHERE date = %s", (day,)).fetchone()[0] == restated
    # both runs' pages for 2024-07-02 are kept, write-once, under their own run ids: one tar per account
    # and day holding its pages as received
    keys = raw_keys(s3, "marketing/facebook/date=2024-07-02/")
    assert len(keys) == 4 and {k.split("/")[-1][:36] for k in keys} == {first.run_id, second.run_id}
    members = {k: raw_members(s3, k) for k in keys}
    assert all(len(m) == 2 for m in members.values())  # pages of 2 rows: 2 per account and day
    stored = pg.execute("SELECT raw_object FROM marketing.facebook_ad_insights_daily WHERE date = '2024-07-05' "
                        "AND ad_id = %s", (mock.facebook_rows(ACCOUNTS[0], date(2024, 7, 5))[-1]["ad_id"],)).fetchone()[0]
    bundle, _, member = stored.removeprefix("s3://raw/").partition("#")
    assert bundle.startswith(f"marketing/facebook/date=2024-07-05/{second.run_id}-act_{ACCOUNTS[0]}-p0001")
    assert member == f"act_{ACCOUNTS[0]}-p0002.json"  # the row's own page inside the bundle
    page = json.loads(raw_members(s3, bundle)[member])
    assert page["data"] and all(r["account_id"] == ACCOUNTS[0] for r in page["data"])


@pytest.mark.parametrize(("key", "table", "natural_key", "per_day"), [
    (GOOGLE_ADS_KEY, "google_ads_ad_daily", "customer_id, ad_group_id, ad_id, date", None),
    (CLEVERTAP_KEY, "clevertap_events", "event_key, occurrence", 5 + 2),
], ids=["google_ads", "clevertap"])
def test_overlapping_lookback_runs_never_duplicate(clean_marketing, marketing_resources, instance, pg, mock,
                                                   key, table, natural_key, per_day) -> None:
    assert materialize([key], "2024-07-01", "2024-07-02", marketing_resources, instance).success
    rerun = materialize([key], "2024-07-02", "2024-07-03", marketing_resources, instance)

    assert rerun.success
    if per_day is None:  # Google omits rows without impressions: count what the API serves
        per_day = len(mock.google_results("1234567890", date(2024, 7, 3))) + len(mock.google_results("2345678901", date(2024, 7, 3)))
    meta = metadata(rerun, key)
    assert meta["inserted"] == per_day and meta["updated"] == 0
    assert pg.execute(f"SELECT count(*) = count(DISTINCT ({natural_key})) FROM marketing.{table}").fetchone()[0]


def test_model_keeps_each_account_currency_and_google_cost_in_units(
        clean_marketing, marketing_resources, instance, pg: psycopg.Connection, mock: MarketingMock) -> None:
    result = materialize([FACEBOOK_KEY, GOOGLE_ADS_KEY, AD_PERFORMANCE_KEY], "2024-07-01", "2024-07-01",
                         marketing_resources, instance)
    assert result.success

    rows = pg.execute("SELECT platform, account_id, currency, count(*), sum(spend) FROM marketing.ad_performance_daily "
                      "GROUP BY 1, 2, 3 ORDER BY 1, 2").fetchall()
    google = mock.google_results("1234567890", date(2024, 7, 1))
    assert [r[:4] for r in rows] == [("facebook", ACCOUNTS[0], "USD", 3), ("facebook", ACCOUNTS[1], "EUR", 3),
                                     ("google_ads", "1234567890", "USD", 3), ("google_ads", "2345678901", "GBP", 3)]
    assert rows[2][4] == sum(Decimal(g["metrics"]["costMicros"]) for g in google) / 1_000_000
    assert pg.execute("SELECT ad_id FROM marketing.ad_performance_daily WHERE platform = 'google_ads' ORDER BY 1 LIMIT 1"
                      ).fetchone()[0] == "220~330"
    assert all(e.passed for e in result.get_asset_check_evaluations())


def test_a_failing_blocking_check_publishes_nothing(clean_marketing, marketing_resources, instance, pg, api: MockApi) -> None:
    assert materialize([FACEBOOK_KEY], "2024-07-01", "2024-07-01", marketing_resources, instance).success
    before = pg.execute("SELECT sum(clicks), max(updated_at) FROM marketing.facebook_ad_insights_daily").fetchone()

    def negative_spend(body: bytes) -> bytes:  # what real data cannot do (negative counts fail the parse)
        doc = json.loads(body)
        for row in doc.get("data", []):  # the account object (time zone) has no data
            if "ad_id" in row:
                row["spend"] = "-0.50"
        return json.dumps(doc).encode()

    api.transform(f"{FACEBOOK_PATH}/*", negative_spend)
    result = materialize([FACEBOOK_KEY], "2024-07-01", "2024-07-01", marketing_resources, instance)

    assert not result.success
    check = checks(result)[("facebook_ad_insights_daily", "metrics_not_negative")]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert check.description.startswith("6 staged row(s) with a negative impressions / clicks / spend")
    assert pg.execute("SELECT sum(clicks), max(updated_at) FROM marketing.facebook_ad_insights_daily").fetchone() == before


def test_totals_that_differ_from_the_api_warn_without_blocking(clean_marketing, marketing_resources, instance, api: MockApi) -> None:
    def inflate_account_totals(body: bytes) -> bytes:
        doc = json.loads(body)
        for row in doc.get("data", []):  # the account object (time zone) has no data
            if "ad_id" not in row:  # level=account rows
                row["impressions"] = str(int(row["impressions"]) + 10)
        return json.dumps(doc).encode()

    api.transform(f"{FACEBOOK_PATH}/*", inflate_account_totals)
    result = materialize([FACEBOOK_KEY], "2024-07-01", "2024-07-01", marketing_resources, instance)

    assert result.success
    check = checks(result)[("facebook_ad_insights_daily", "totals_match_api")]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.description.startswith("2 total(s) differ from the API's own figures")
    mismatch = check.metadata["mismatches"].value[0]
    assert int(mismatch["api"]) - int(mismatch["loaded"]) == 10


def test_a_changed_api_schema_fails_the_run_publishes_nothing_and_keeps_the_raw_pages(
        clean_marketing, marketing_resources, instance, pg, api: MockApi, s3) -> None:
    change_schema(api, "clevertap")  # ts arrives as epoch seconds
    result = materialize([CLEVERTAP_KEY], "2024-07-01", "2024-07-01", marketing_resources, instance)

    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.message
    assert "clevertap: unexpected response schema in s3://raw/marketing/clevertap/date=2024-07-01/" in message
    assert "records[0]: ts is" in message and "looks like epoch seconds" in message
    assert pg.execute("SELECT count(*) FROM marketing.clevertap_events").fetchone()[0] == 0
    assert raw_keys(s3, f"marketing/clevertap/date=2024-07-01/{result.run_id}-")  # replayable once the parser is fixed


def test_replay_rebuilds_a_load_from_the_raw_pages_without_calling_the_api(
        clean_marketing, marketing_resources, instance, pg, api: MockApi, monkeypatch) -> None:
    loaded = materialize([CLEVERTAP_KEY], "2024-07-01", "2024-07-02", marketing_resources, instance)
    assert loaded.success
    query = "SELECT event_key, occurrence, event_name, event_ts, event_props, raw_object FROM marketing.clevertap_events ORDER BY 1, 2"
    before = pg.execute(query).fetchall()
    pg.execute("TRUNCATE marketing.clevertap_events")
    monkeypatch.setenv("CLEVERTAP_PASSCODE", "revoked-passcode")  # the API could not be used any more
    calls = len(api.requests)

    replay = dg.materialize(
        ASSETS, selection=[CLEVERTAP_KEY], resources=marketing_resources, instance=instance,
        tags={RANGE_START_TAG: "2024-07-01", RANGE_END_TAG: "2024-07-02"},
        run_config=dg.RunConfig(ops={CLEVERTAP_KEY.to_python_identifier(): ApiAssetConfig(replay_run_id=loaded.run_id)}))

    assert replay.success and len(api.requests) == calls
    assert pg.execute(query).fetchall() == before and len(before) == 2 * (5 + 2)
    assert metadata(replay, CLEVERTAP_KEY)["replayed_run"] == loaded.run_id


def test_the_daily_schedule_requests_one_range_run_per_source_over_its_lookback_window() -> None:
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2024, 7, 30, 6, tzinfo=UTC))

    requests = {r.tags["marketing/source"]: r for r in marketing_daily.evaluate_tick(context).run_requests}

    assert {s: (r.tags[RANGE_START_TAG], r.tags[RANGE_END_TAG]) for s, r in requests.items()} == {
        "facebook": ("2024-07-02", "2024-07-29"), "google_ads": ("2024-07-16", "2024-07-29"),
        "clevertap": ("2024-07-27", "2024-07-29"), "rds": ("2024-07-28", "2024-07-29")}
    assert requests["facebook"].asset_selection == [FACEBOOK_KEY, AD_PERFORMANCE_KEY]
    assert requests["rds"].asset_selection == [RDS_CUSTOMERS_KEY, RDS_ORDERS_KEY]
    assert requests["google_ads"].tags["covid_lakehouse/pool"] == "marketing_google_ads"


def test_bootstrap_sensor_requests_each_unloaded_source_once(instance, monkeypatch) -> None:
    monkeypatch.setenv("MARKETING_BOOTSTRAP_DAYS", "3")
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=RDS_CUSTOMERS_KEY, partition="2024-07-01"))

    with dg.build_sensor_context(instance=instance) as context:
        first = marketing_bootstrap.evaluate_tick(context)
    yesterday = datetime.now(UTC).date() - timedelta(days=1)

    assert sorted(r.tags["marketing/source"] for r in first.run_requests) == ["clevertap", "facebook", "google_ads"]
    assert {(r.tags[RANGE_START_TAG], r.tags[RANGE_END_TAG]) for r in first.run_requests} == {
        ((yesterday - timedelta(days=2)).isoformat(), yesterday.isoformat())}
    with dg.build_sensor_context(instance=instance, cursor=first.cursor) as context:
        again = marketing_bootstrap.evaluate_tick(context)
    assert not again.run_requests and again.skip_message.startswith("every source has been loaded or requested")


def test_demo_procedure_materializes_every_marketing_asset(clean_marketing, api: MockApi, rds_demo_source,
                                                         services, instance) -> None:
    """What `make demo` does (runtime.run_demo): tick every sensor, run its requests through the
    implicit asset job, with the product's own resources and the mock's environment."""
    defs = dg.Definitions.merge(marketing_defs, dg.Definitions(resources=platform_resources()))
    job = defs.resolve_implicit_global_asset_job_def()
    with dg.build_sensor_context(instance=instance, definitions=defs) as context:
        data = marketing_bootstrap.evaluate_tick(context)

    results = [job.execute_in_process(instance=instance, asset_selection=list(r.asset_selection), tags=r.tags,
                                      raise_on_error=False) for r in data.run_requests]

    assert [r.success for r in results] == [True] * 4
    materialized = {e.asset_key for r in results for e in r.get_asset_materialization_events()}
    assert materialized == {FACEBOOK_KEY, GOOGLE_ADS_KEY, CLEVERTAP_KEY, RDS_CUSTOMERS_KEY, RDS_ORDERS_KEY, AD_PERFORMANCE_KEY}
    evaluations = [e for r in results for e in r.get_asset_check_evaluations()]
    assert evaluations and all(e.passed for e in evaluations)
    assert all(metadata(r, next(iter(r.get_asset_materialization_events())).asset_key)["dagster/row_count"] > 0
               for r in results)
