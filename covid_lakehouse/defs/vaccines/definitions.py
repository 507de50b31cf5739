"""What the vaccines domain registers in the code location (loaded by dg.load_from_defs_folder)."""

import dagster as dg

from covid_lakehouse.defs.vaccines.assets import people_per_dose, raw_sources
from covid_lakehouse.defs.vaccines.ranking import people_per_dose_ranking
from covid_lakehouse.defs.vaccines.resources import VaccinesSettings
from covid_lakehouse.defs.vaccines.schedules import vaccines_refresh, vaccines_weekly

defs = dg.Definitions(
    assets=[raw_sources, people_per_dose, people_per_dose_ranking],
    jobs=[vaccines_refresh],
    schedules=[vaccines_weekly],
    # No config here: the URLs are resolved from the environment when a run starts (see resources.py).
    resources={"vaccines_settings": VaccinesSettings()},
)
