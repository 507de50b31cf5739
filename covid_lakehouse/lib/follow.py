"""Sensors that keep a downstream asset up to date with its upstream: each tick requests the
downstream for the partitions the upstream materialized since the last tick (remembered in the cursor).

Partitioned upstream assets are written by runs that cover many partitions (one run over every county,
a look-back window of days); the downstream follows in one range run over the same partitions, or one
run per partition where each partition is its own table (a tenant's namespace)."""

from __future__ import annotations

import dagster as dg

from covid_lakehouse.lib.policies import max_runtime

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def follow_sensor(name: str, upstream: dg.AssetKey, downstream: dg.AssetsDefinition, *,
                  one_run_per_partition: bool = False, max_runtime_hours: float = 1) -> dg.SensorDefinition:
    partitions_def = downstream.partitions_def
    bound = max_runtime(hours=max_runtime_hours)  # an asset-selection run inherits no job tags

    @dg.sensor(name=name, asset_selection=[downstream.key], minimum_interval_seconds=60,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"Materializes {downstream.key.to_user_string()} for the partitions "
                           f"{upstream.to_user_string()} materialized since its last tick")
    def follow(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        after = int(context.cursor) if context.cursor else None
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=upstream, after_storage_id=after), limit=10_000, ascending=True).records
        if not records:
            return dg.SkipReason(f"no new materialization of {upstream.to_user_string()}")
        cursor = str(records[-1].storage_id)
        new = {r.partition_key for r in records if r.partition_key}
        if partitions_def is None:
            runs = [dg.RunRequest(run_key=f"{name}:{cursor}", asset_selection=[downstream.key], tags=bound)]
        else:
            with dg.partition_loading_context(dynamic_partitions_store=context.instance):
                ordered = [k for k in partitions_def.get_partition_keys() if k in new]
            if not ordered:
                return dg.SensorResult(cursor=cursor, skip_reason=dg.SkipReason("no partition of the downstream"))
            if one_run_per_partition:
                runs = [dg.RunRequest(run_key=f"{name}:{cursor}:{k}", partition_key=k, asset_selection=[downstream.key],
                                      tags=bound) for k in ordered]
            else:  # one range run (between them: partitions not re-published load their current rows)
                runs = [dg.RunRequest(run_key=f"{name}:{cursor}", asset_selection=[downstream.key],
                                      tags={**bound, RANGE_START_TAG: ordered[0], RANGE_END_TAG: ordered[-1]})]
        return dg.SensorResult(run_requests=runs, cursor=cursor)

    return follow
