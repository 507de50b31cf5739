"""Counties are dynamic partitions: the sensor adds whatever the source lists, nothing is hard-coded.

Each new county becomes a partition, a table and a branch of the all_counties view, so a download may
add only a bounded number of them (NY_TESTING_MAX_NEW_COUNTIES; the real dataset has 62 counties in
all): a body listing thousands of made-up counties is refused whole, and nothing is added.
"""

from collections.abc import Iterable

import dagster as dg

from covid_lakehouse.defs.ny_testing.parsing import SourceFormatError
from covid_lakehouse.lib.settings import setting

COUNTY_PARTITIONS_NAME = "ny_testing_counties"
county_partitions = dg.DynamicPartitionsDefinition(name=COUNTY_PARTITIONS_NAME)

MAX_NEW_COUNTIES = setting(
    "NY_TESTING_MAX_NEW_COUNTIES", "counties one download may add (each becomes a partition and a table; "
    "the real dataset has 62): a download listing more new ones is refused and nothing is added",
    default="100", scope="ny_testing")


def check_new_counties(instance: dg.DagsterInstance, counties: Iterable[str], source: str) -> list[str]:
    """The counties not yet partitions, or SourceFormatError when there are more than the cap."""
    existing = set(instance.get_dynamic_partitions(COUNTY_PARTITIONS_NAME))
    new = sorted(set(counties) - existing)
    cap = int(MAX_NEW_COUNTIES.number(minimum=0) or 0)
    if len(new) > cap:
        raise SourceFormatError(source, f"lists {len(new)} counties that are not yet partitions, more than the "
                                f"{cap} one download may add ({MAX_NEW_COUNTIES.name}; the real dataset has "
                                f"62 counties); the first new ones: {', '.join(new[:5])}")
    return new
