"""Counties are dynamic partitions: the sensor adds whatever the source lists, nothing is hard-coded."""

import dagster as dg

COUNTY_PARTITIONS_NAME = "ny_testing_counties"
county_partitions = dg.DynamicPartitionsDefinition(name=COUNTY_PARTITIONS_NAME)
