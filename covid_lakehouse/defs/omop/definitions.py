"""What the omop domain registers in the code location (loaded by dg.load_from_defs_folder)."""

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
from covid_lakehouse.defs.omop.specialties import providers_per_specialty, specialties_follow_providers
from covid_lakehouse.defs.omop.tenants import TenantsResource

defs = dg.Definitions(
    assets=[source_database, client_files, landing_files, care_site, provider, providers_per_specialty],
    jobs=[omop_tenant_job],
    schedules=[omop_daily],
    # The landing sensor first: in the demo's single tick it skips the not-yet-registered tenant,
    # which the tenants sensor then adds and runs once (with the landing file already there).
    sensors=[omop_landing_sensor, omop_tenants_sensor, specialties_follow_providers],
    resources={"omop_tenants": TenantsResource()},
)
