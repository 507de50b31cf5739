"""What the platform domain registers in the code location (loaded by dg.load_from_defs_folder)."""

import dagster as dg

from covid_lakehouse.defs.platform import raw_retention
from covid_lakehouse.defs.platform.assets import smoke_lakehouse, smoke_warehouse
from covid_lakehouse.defs.platform.sensors import record_run_failures

defs = dg.Definitions(assets=[smoke_warehouse, smoke_lakehouse], sensors=[record_run_failures])
defs = dg.Definitions.merge(defs, raw_retention.defs)  # the raw bucket's retention job and its daily schedule
