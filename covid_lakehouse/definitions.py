"""The single code location: every domain's definitions merged with the platform's resources.

Domains never import each other; cross-domain dependencies go through asset keys."""

import dagster as dg

from covid_lakehouse.defs import ads, marketing, ny_testing, omop, platform, vaccines
from covid_lakehouse.lib.resources import platform_resources

defs = dg.Definitions.merge(
    platform.defs,
    ny_testing.defs,
    vaccines.defs,
    ads.defs,
    marketing.defs,
    omop.defs,
    dg.Definitions(resources=platform_resources()),
)
