"""A downstream asset of the county tables: the 7-day test positivity per county and day.

It reads ny_testing/county_tests through the warehouse IO manager (the all_counties view, only the
counties of the run) and is written by it to ny_testing_derived.positivity_7d, one slice per county.
The sensor below runs it over the counties each load published."""

import dagster as dg
import pandas as pd

from covid_lakehouse.defs.ny_testing.asset_keys import COUNTY_KEY, GROUP
from covid_lakehouse.defs.ny_testing.partitions import county_partitions
from covid_lakehouse.lib.follow import follow_sensor

POSITIVITY_KEY = dg.AssetKey(["ny_testing", "positivity_7d"])
WINDOW = "7D"  # calendar days: a county missing a day does not stretch the window


def seven_day_positivity(county_tests: pd.DataFrame) -> pd.DataFrame:
    """Per county and test_date: positives and tests over the 7 days ending that day, and their ratio
    (NULL when no test was performed in the window)."""
    columns = ["county", "test_date", "positives_7d", "tests_7d", "positivity_7d"]
    if county_tests.empty:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
            columns, ["string", "datetime64[ns]", "int64", "int64", "float64"], strict=True)})
    frame = county_tests[["county", "test_date", "new_positives", "total_number_of_tests_performed"]].copy()
    frame["test_date"] = pd.to_datetime(frame["test_date"])
    frame = frame.sort_values(["county", "test_date"]).set_index("test_date")
    rolled = (frame.groupby("county")[["new_positives", "total_number_of_tests_performed"]]
              .rolling(WINDOW).sum().reset_index())
    out = pd.DataFrame({
        "county": rolled["county"].astype("string"),
        "test_date": rolled["test_date"].dt.date,
        "positives_7d": rolled["new_positives"].astype("int64"),
        "tests_7d": rolled["total_number_of_tests_performed"].astype("int64"),
    })
    out["positivity_7d"] = (out["positives_7d"] / out["tests_7d"].where(out["tests_7d"] > 0)).astype("float64")
    return out[columns]


@dg.asset(
    key=POSITIVITY_KEY,
    group_name=GROUP,
    kinds={"postgres", "pandas"},
    partitions_def=county_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    ins={"county_tests": dg.AssetIn(COUNTY_KEY)},
    io_manager_key="warehouse_io_manager",
    metadata={"dagster/table_name": "ny_testing_derived.positivity_7d", "partition_expr": "county"},
    description="7-day test positivity per county and day (positives / tests over the 7 days ending that day), "
    "from the published county tables; warehouse table ny_testing_derived.positivity_7d.",
)
def positivity_7d(context: dg.AssetExecutionContext, county_tests: pd.DataFrame) -> pd.DataFrame:
    result = seven_day_positivity(county_tests)
    context.log.info("positivity_7d: %d rows for %d counties", len(result), result["county"].nunique())
    return result


positivity_follows_counties = follow_sensor("ny_testing_positivity", COUNTY_KEY, positivity_7d)
