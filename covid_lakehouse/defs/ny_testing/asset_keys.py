"""The names the ny_testing assets publish under, shared by the assets, sensors, schedule and checks:
asset keys, the run tags the sensor sets for a county run, and the county tables' column schema."""

import dagster as dg

from covid_lakehouse.defs.ny_testing.parsing import MEASURES

GROUP = "ny_testing"
RAW_KEY = dg.AssetKey(["ny_testing", "raw_rows_json"])
COUNTY_KEY = dg.AssetKey(["ny_testing", "county_tests"])
RAW_KEY_TAG = "ny_testing/raw_key"  # set by the sensor: the download a county run loads
RAW_FETCHED_AT_TAG = "ny_testing/raw_fetched_at"  # set by the sensor: when that download was fetched (ISO 8601)

COUNTY_TABLE_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("test_date", "date", description="primary key",
                       constraints=dg.TableColumnConstraints(nullable=False, unique=True)),
        *(dg.TableColumn(m, "bigint", constraints=dg.TableColumnConstraints(nullable=False)) for m in MEASURES),
        dg.TableColumn("load_date", "timestamptz",
                       description="when this row was first loaded or last changed by the source (not every run)",
                       constraints=dg.TableColumnConstraints(nullable=False)),
    ]
)
