"""OMOP CDM provider and care_site per tenant, harmonized from each tenant's PostgreSQL (system of
record) and its client file drops into Iceberg tables omop_<tenant>.*. See docs/omop.md and
docs/data-quality.md."""

import dagster as dg

from covid_lakehouse.defs.omop.assets import (
    care_site,
    client_files,
    landing_files,
    provider,
    source_database,
)
from covid_lakehouse.defs.omop.schedules import omop_daily
from covid_lakehouse.defs.omop.sensors import omop_landing_sensor, omop_tenant_job, omop_tenants_sensor
from covid_lakehouse.defs.omop.tenants import TenantsResource


def build_defs(tenants: TenantsResource | None = None) -> dg.Definitions:
    """The domain's definitions; tests pass their own tenants file."""
    return dg.Definitions(
        assets=[source_database, client_files, landing_files, care_site, provider],
        jobs=[omop_tenant_job],
        schedules=[omop_daily],
        # The landing sensor first: in the demo's single tick it skips the not-yet-registered tenant,
        # which the tenants sensor then adds and runs once (with the landing file already there).
        sensors=[omop_landing_sensor, omop_tenants_sensor],
        resources={"omop_tenants": tenants or TenantsResource()},
    )


defs = build_defs()
