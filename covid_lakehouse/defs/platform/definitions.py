"""What the platform domain registers in the code location (loaded by dg.load_from_defs_folder)."""

import dagster as dg

from covid_lakehouse.defs.platform.assets import smoke_lakehouse, smoke_warehouse
from covid_lakehouse.defs.platform.maintenance import lakehouse_maintenance, lakehouse_maintenance_daily
from covid_lakehouse.defs.platform.sensors import record_run_failures

defs = dg.Definitions(assets=[smoke_warehouse, smoke_lakehouse], jobs=[lakehouse_maintenance],
                      schedules=[lakehouse_maintenance_daily], sensors=[record_run_failures])
