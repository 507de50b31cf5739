"""The ad performance model loads as an input: cost per conversion reads only the days of its run
through the warehouse IO manager, is written per day by it, and follows each model run."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import dagster as dg
import pytest

from covid_lakehouse.defs.marketing.assets import AD_PERFORMANCE_KEY
from covid_lakehouse.defs.marketing.cost_per_conversion import COST_PER_CONVERSION_KEY, cost_follows_model
from covid_lakehouse.defs.marketing.definitions import defs as marketing_defs
from covid_lakehouse.defs.marketing.tables import ensure_tables
from covid_lakehouse.lib.policies import rebuilt

pytestmark = pytest.mark.integration
RANGE = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")
# platform, account, ad, day, impressions, clicks, spend, currency, conversions
MODEL_ROWS = [
    ("facebook", "act_1", "a1", date(2024, 3, 1), 1000, 10, "12.50", "USD", "2"),
    ("facebook", "act_1", "a2", date(2024, 3, 1), 500, 5, "7.50", "USD", "3"),
    ("google_ads", "c1", "g~1", date(2024, 3, 1), 800, 8, "30", "EUR", "0"),
    ("facebook", "act_1", "a1", date(2024, 3, 2), 900, 9, "9", "USD", "4"),
    ("facebook", "act_1", "a1", date(2024, 3, 5), 100, 1, "99", "USD", "1"),  # outside the run's days
]


@pytest.fixture
def model(clean_marketing, warehouse, pg):
    with warehouse.connection() as conn:
        ensure_tables(conn)
    for p, acct, ad, day, imp, clicks, spend, cur, conv in MODEL_ROWS:
        pg.execute("INSERT INTO marketing.ad_performance_daily (platform, account_id, campaign_id, ad_id, date, "
                   "impressions, clicks, spend, currency, conversions) VALUES (%s, %s, 'c', %s, %s, %s, %s, %s, %s, %s)",
                   (p, acct, ad, day, imp, clicks, spend, cur, conv))
    yield
    pg.execute("DROP TABLE IF EXISTS marketing.cost_per_conversion_daily")


def test_cost_per_conversion_reads_and_replaces_only_its_days(model, resources, instance, pg):
    defs = rebuilt(marketing_defs, resources={**dict(marketing_defs.resources or {}), **resources})
    job = defs.resolve_implicit_global_asset_job_def()
    tags = dict(zip(RANGE, ("2024-03-01", "2024-03-03"), strict=True))
    for _ in range(2):  # a rerun replaces its days: no duplicates
        assert job.execute_in_process(instance=instance, asset_selection=[COST_PER_CONVERSION_KEY], tags=tags).success
    rows = pg.execute("SELECT platform, date, currency, impressions, spend, conversions, cost_per_conversion "
                      "FROM marketing.cost_per_conversion_daily ORDER BY date, platform").fetchall()
    assert rows == [
        ("facebook", date(2024, 3, 1), "USD", 1500, Decimal("20.000000"), Decimal("5.000000"), Decimal("4.000000")),
        ("google_ads", date(2024, 3, 1), "EUR", 800, Decimal("30.000000"), Decimal("0.000000"), None),
        ("facebook", date(2024, 3, 2), "USD", 900, Decimal("9.000000"), Decimal("4.000000"), Decimal("2.250000")),
    ]
    # Analysts load one day of the model, the same way.
    day = defs.load_asset_value(AD_PERFORMANCE_KEY, partition_key="2024-03-02", instance=instance)
    assert list(day["ad_id"]) == ["a1"]


def test_the_sensor_requests_one_run_over_the_days_the_model_published(instance):
    sensor = cost_follows_model()
    for day in ("2024-03-04", "2024-03-02", "2024-03-03"):
        instance.report_runless_asset_event(dg.AssetMaterialization(AD_PERFORMANCE_KEY, partition=day))
    result = sensor(dg.build_sensor_context(instance=instance))
    [request] = result.run_requests
    assert request.asset_selection == [COST_PER_CONVERSION_KEY]
    assert (request.tags[RANGE[0]], request.tags[RANGE[1]]) == ("2024-03-02", "2024-03-04")
    again = sensor(dg.build_sensor_context(instance=instance, cursor=result.cursor))
    assert isinstance(again, dg.SkipReason)
