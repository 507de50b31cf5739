"""A streamed Facebook load whose audit fold cannot follow a staged chunk (a spend with more decimals than the
fold reads) falls back to a scan of the staging table, and says so in the run's own log (``context.log``),
where operators see it in the UI, not only in the process' log."""

import json
import logging

import dagster as dg
import pytest

from covid_lakehouse.defs.marketing.assets import ASSETS, FACEBOOK_KEY
from covid_lakehouse.defs.marketing.partitions import RANGE_END_TAG, RANGE_START_TAG
from covid_lakehouse.defs.marketing.tables import FACEBOOK, SCHEMA
from covid_lakehouse_dev.apis.harness import MockApi
from covid_lakehouse_dev.apis.marketing import FACEBOOK_PATH

pytestmark = pytest.mark.integration
DAY = "2024-07-01"


def spend_with_13_decimals(body: bytes) -> bytes:
    """Each ad row's spend gains 1e-13: the table rounds it away (numeric(20, 6)); the fold gives up on it."""
    doc = json.loads(body)
    for row in doc.get("data", []) if isinstance(doc, dict) else []:
        if "ad_id" in row and isinstance(row.get("spend"), str):
            row["spend"] = f"{row['spend']}0000000000001" if "." in row["spend"] else f"{row['spend']}.0000000000001"
    return json.dumps(doc).encode()


def test_a_fold_giving_up_is_said_in_the_runs_log(clean_marketing, marketing_resources, api: MockApi, instance, pg) -> None:
    api.transform(FACEBOOK_PATH + "/*", spend_with_13_decimals)
    result = dg.materialize(ASSETS, selection=[FACEBOOK_KEY], resources=marketing_resources, instance=instance,
                            raise_on_error=False, tags={RANGE_START_TAG: DAY, RANGE_END_TAG: DAY})
    assert result.success
    warnings = [e.user_message for e in instance.all_logs(result.run_id) if e.level == logging.WARNING]
    gave_up = [m for m in warnings if "could not follow a staged chunk" in m]
    assert gave_up and all(FACEBOOK.name in m and "marketing_staging." in m for m in gave_up), warnings
    # the audits scanned the staging table instead: same verdicts, the rows published (spend rounded)
    evaluations = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert evaluations["metrics_not_negative"] and evaluations["totals_within_tolerance"]
    assert pg.execute(f"SELECT count(*) FROM {SCHEMA}.{FACEBOOK.name}").fetchone()[0] > 0
