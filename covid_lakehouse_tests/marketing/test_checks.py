"""What the marketing checks block and what they only report: clicks above impressions is a WARN that
lists the rows; null keys, negative metrics and totals beyond the stated tolerance block; replay says
how it reconciles."""

import json
from decimal import Decimal

import dagster as dg
import pytest
from psycopg import sql

from covid_lakehouse.defs.marketing import checks as marketing_checks
from covid_lakehouse.defs.marketing.assets import (
    AD_PERFORMANCE_KEY,
    ASSETS,
    FACEBOOK_KEY,
    GOOGLE_ADS_KEY,
    ApiAssetConfig,
)
from covid_lakehouse.defs.marketing.load import Staged
from covid_lakehouse.defs.marketing.partitions import RANGE_END_TAG, RANGE_START_TAG
from covid_lakehouse.defs.marketing.tables import AD_PERFORMANCE
from covid_lakehouse_dev.apis.harness import MockApi
from covid_lakehouse_dev.apis.marketing import FACEBOOK_PATH

pytestmark = pytest.mark.integration


def materialize(keys, resources, instance, run_config=None) -> dg.ExecuteInProcessResult:
    return dg.materialize(ASSETS, selection=keys, resources=resources, instance=instance, raise_on_error=False,
                          tags={RANGE_START_TAG: "2024-07-01", RANGE_END_TAG: "2024-07-01"}, run_config=run_config)


def evaluations(result) -> dict:
    return {(e.asset_key, e.check_name): e for e in result.get_asset_check_evaluations()}


def test_clicks_above_impressions_warn_listing_the_rows_and_publish(
        clean_marketing, marketing_resources, instance, pg, api: MockApi) -> None:
    def more_clicks_than_impressions(body: bytes) -> bytes:  # Facebook counts every click: real rows do this
        doc = json.loads(body)
        for row in doc.get("data", []):  # the account object (time zone) has no data
            if "ad_id" in row:
                row["clicks"] = str(int(row["impressions"]) + 1)
            elif "impressions" in row:  # keep the account totals consistent
                row["clicks"] = str(int(row["impressions"]) + 3)
        return json.dumps(doc).encode()

    api.transform(f"{FACEBOOK_PATH}/*", more_clicks_than_impressions)
    result = materialize([FACEBOOK_KEY, AD_PERFORMANCE_KEY], marketing_resources, instance)

    assert result.success
    found = evaluations(result)
    for key in (FACEBOOK_KEY, AD_PERFORMANCE_KEY):
        check = found[(key, "clicks_not_above_impressions")]
        assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
        rows = check.metadata["rows"].value
        assert len(rows) == 6 and all(int(r["clicks"]) == int(r["impressions"]) + 1 for r in rows)
    assert pg.execute("SELECT count(*) FROM marketing.facebook_ad_insights_daily WHERE clicks > impressions").fetchone()[0] == 6


def test_totals_beyond_the_tolerance_block(clean_marketing, marketing_resources, instance, pg, api: MockApi) -> None:
    def double_account_totals(body: bytes) -> bytes:
        doc = json.loads(body)
        for row in doc.get("data", []):  # the account object (time zone) has no data
            if "ad_id" not in row:
                row["impressions"] = str(int(row["impressions"]) * 2)
        return json.dumps(doc).encode()

    api.transform(f"{FACEBOOK_PATH}/*", double_account_totals)
    result = materialize([FACEBOOK_KEY], marketing_resources, instance)

    assert not result.success
    found = evaluations(result)
    blocking = found[(FACEBOOK_KEY, "totals_within_tolerance")]
    assert not blocking.passed and blocking.severity == dg.AssetCheckSeverity.ERROR
    assert not found[(FACEBOOK_KEY, "totals_match_api")].passed
    assert pg.execute("SELECT count(*) FROM marketing.facebook_ad_insights_daily").fetchone()[0] == 0


def test_null_keys_block(pg, clean_marketing) -> None:
    with pg.transaction():
        pg.execute("CREATE TEMP TABLE stg_perf AS SELECT * FROM (VALUES ('facebook', NULL, 'c', 'ad', DATE '2024-07-01', "
                   "10::bigint, 1::bigint, 1.5::numeric)) AS t(platform, account_id, campaign_id, ad_id, date, impressions, "
                   "clicks, spend)")
        result = marketing_checks.KEYS_NOT_NULL.fn(Staged(pg, sql.Identifier("stg_perf"), AD_PERFORMANCE))
        pg.execute("DROP TABLE stg_perf")
    assert not result.passed and marketing_checks.KEYS_NOT_NULL.blocking
    assert result.description.startswith("1 staged row(s) with a null key column (platform, account_id, ad_id, date)")


def test_the_tolerance_is_relative_with_a_one_unit_floor() -> None:
    class Conn:  # the staged sums, as the audit's GROUP BY returns them
        def __init__(self, rows):
            self.rows = rows

        def execute(self, *args):
            return self

        def fetchall(self):
            return self.rows

    audit = marketing_checks.reconcile(("g",), {"n": None}, marketing_checks.RECONCILE_MIN_UNITS,
                                       marketing_checks.RECONCILE_TOLERANCE)

    def verdict(api: int, loaded: int) -> bool:
        return audit(Staged(Conn([("a", loaded)]), sql.Identifier("t"), AD_PERFORMANCE, {("a",): {"n": Decimal(api)}})).passed

    assert verdict(1000, 990) and not verdict(1000, 989)  # 1%
    assert verdict(10, 9) and not verdict(10, 8)  # at least one unit


def test_replay_says_how_it_reconciles(clean_marketing, marketing_resources, instance) -> None:
    loaded = materialize([FACEBOOK_KEY, GOOGLE_ADS_KEY], marketing_resources, instance)
    assert loaded.success

    replay = materialize([FACEBOOK_KEY, GOOGLE_ADS_KEY], marketing_resources, instance, run_config=dg.RunConfig(ops={
        k.to_python_identifier(): ApiAssetConfig(replay_run_id=loaded.run_id) for k in (FACEBOOK_KEY, GOOGLE_ADS_KEY)}))

    assert replay.success
    found = evaluations(replay)
    assert found[(FACEBOOK_KEY, "totals_match_api")].description.startswith(
        f"replay of run {loaded.run_id}: the API's totals are not part of the landed raw pages")
    google = found[(GOOGLE_ADS_KEY, "totals_within_tolerance")]  # the summary rows are in the landed stream
    assert google.passed and google.description.startswith("2 group total(s) are within 1%")
