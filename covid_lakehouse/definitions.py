"""The single code location: every domain under covid_lakehouse/defs/ (each says what it registers in
its definitions.py), the platform's resources, and the policies that apply to every asset.

Domains never import each other; cross-domain dependencies go through asset keys."""

from datetime import timedelta
from pathlib import Path

import dagster as dg

from covid_lakehouse.lib.policies import AssetPolicy, apply_policies
from covid_lakehouse.lib.resources import platform_resources

# A daily-refreshed dataset is stale once a day's run has been missed.
_DAILY = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=30), warn_window=timedelta(hours=26))
_WEEKLY = dg.FreshnessPolicy.time_window(fail_window=timedelta(days=8), warn_window=timedelta(days=7, hours=2))

POLICIES = {
    "ny_testing": AssetPolicy(owners=("team:public-health",), freshness=_DAILY),
    "vaccines": AssetPolicy(owners=("team:public-health",), freshness=_WEEKLY),
    "omop": AssetPolicy(owners=("team:clinical-data",), freshness=_DAILY),
    "ads": AssetPolicy(owners=("team:marketing-data",), freshness=_DAILY),
    "marketing": AssetPolicy(owners=("team:marketing-data",), freshness=_DAILY),
    "platform": AssetPolicy(owners=("team:data-platform",)),
}


def code_location() -> dg.Definitions:
    """Everything the code location serves (`covid-lakehouse demo` runs it in-process)."""
    domains = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
    return apply_policies(dg.Definitions.merge(domains, dg.Definitions(resources=platform_resources())), POLICIES)


# What `dg`, `dagster code-server -m covid_lakehouse.definitions` and workspace.yaml load.
defs = dg.definitions(code_location)
