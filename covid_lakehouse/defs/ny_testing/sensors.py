"""After each download: register the counties it lists as partitions and load all of them in one run.

The cursor is the storage id of the last raw materialization handled, so a tick without a new download
requests nothing. Counties are never removed: one missing from a download keeps its partition and its
table, is logged here and reported by the county_tests check ``counties_present``.
"""

import dagster as dg

from covid_lakehouse.defs.ny_testing.asset_keys import COUNTY_KEY, RAW_FETCHED_AT_TAG, RAW_KEY, RAW_KEY_TAG
from covid_lakehouse.defs.ny_testing.partitions import (
    COUNTY_PARTITIONS_NAME,
    check_new_counties,
    county_partitions,
)
from covid_lakehouse.defs.ny_testing.versions import fetched_at
from covid_lakehouse.lib.policies import max_runtime


@dg.sensor(
    name="ny_testing_county_partitions",
    asset_selection=[COUNTY_KEY],
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="On each new ny_testing/raw_rows_json materialization: add new counties as partitions of "
    f"{COUNTY_PARTITIONS_NAME} and request one run of ny_testing/county_tests over every county partition.",
)
def ny_testing_county_partitions(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    latest = context.instance.fetch_materializations(RAW_KEY, limit=1).records
    if not latest:
        return dg.SkipReason(f"{RAW_KEY.to_user_string()} has not been materialized yet")
    event = latest[0]
    if context.cursor and event.storage_id <= int(context.cursor):
        return dg.SkipReason(f"no download since the one handled (storage id {context.cursor})")
    metadata = event.asset_materialization.metadata
    in_source = list(metadata["counties"].value)
    existing = list(context.instance.get_dynamic_partitions(COUNTY_PARTITIONS_NAME))
    # The raw asset refuses such downloads; checked again so that no path adds more than the cap.
    new = check_new_counties(context.instance, in_source, metadata["s3_key"].value)
    gone = sorted(set(existing) - set(in_source))
    if new:
        context.log.info("adding %d county partition(s): %s", len(new), ", ".join(new))
    if gone:
        context.log.warning("%d county partition(s) missing from the latest download keep their tables: %s",
                            len(gone), ", ".join(gone))
    # A range follows the partitions' own order, which is the order they were added (new ones last).
    keys = existing + new
    cursor = str(event.storage_id)
    if not keys:
        return dg.SensorResult(skip_reason="the download lists no county", cursor=cursor)
    request = dg.RunRequest(
        run_key=f"ny_testing_raw_{event.storage_id}",
        asset_selection=[COUNTY_KEY],
        tags={
            "dagster/asset_partition_range_start": keys[0],
            "dagster/asset_partition_range_end": keys[-1],
            RAW_KEY_TAG: metadata["s3_key"].value,  # load exactly the download that triggered this run
            # and never over a newer one's rows (a retry of this run may come after the next download)
            RAW_FETCHED_AT_TAG: fetched_at(event.timestamp).isoformat(),
            **max_runtime(hours=3),  # an asset-selection run inherits no job tags
        },
    )
    return dg.SensorResult(
        dynamic_partitions_requests=[county_partitions.build_add_request(new)] if new else [],
        run_requests=[request],
        cursor=cursor,
    )
