"""Vaccines domain: people per COVID-19 vaccine dose allocated, for the 50 states and DC.

Sources (resources.VaccineSources), raw objects in S3 and the published warehouse tables are described
in docs/vaccines.md."""

import dagster as dg

from covid_lakehouse.defs.vaccines.assets import people_per_dose, raw_sources
from covid_lakehouse.defs.vaccines.resources import VaccineSources
from covid_lakehouse.defs.vaccines.schedules import vaccines_refresh, vaccines_weekly

defs = dg.Definitions(
    assets=[raw_sources, people_per_dose],
    jobs=[vaccines_refresh],
    schedules=[vaccines_weekly],
    # No config here: the URLs are resolved from the environment when a run starts (see resources.py).
    resources={"vaccine_sources": VaccineSources()},
)
