"""The daily Iceberg maintenance job: in every namespace (each omop tenant, ads, platform), expire
snapshots past the retention and delete files nothing references (see lib/lakehouse_maintenance.py)."""

from datetime import UTC, datetime, timedelta

import dagster as dg

from covid_lakehouse.lib.lakehouse import LakehouseResource
from covid_lakehouse.lib.lakehouse_maintenance import all_tables, maintain_table
from covid_lakehouse.lib.policies import max_runtime
from covid_lakehouse.lib.s3 import LakeS3Resource
from covid_lakehouse.lib.settings import SettingError, setting

SNAPSHOT_RETENTION_DAYS = setting(
    "LAKEHOUSE_SNAPSHOT_RETENTION_DAYS", "Iceberg snapshots older than this are expired daily (the current one "
    "is always kept); time travel and the ads archive's crash recovery and restore look back this far",
    default="7")
ORPHAN_MARGIN_HOURS = setting(
    "LAKEHOUSE_ORPHAN_MARGIN_HOURS", "a file no Iceberg snapshot references is deleted once older than this; at "
    "least the longest run allowed (run monitoring's max runtime), so a running job's uncommitted files stay",
    default="24")


def maintenance_windows(instance: dg.DagsterInstance) -> tuple[timedelta, timedelta]:
    retention = timedelta(days=SNAPSHOT_RETENTION_DAYS.number(minimum=1))
    margin = timedelta(hours=ORPHAN_MARGIN_HOURS.number(minimum=1))
    longest = instance.run_monitoring_max_runtime_seconds if instance.run_monitoring_enabled else 0
    if margin.total_seconds() < longest:
        raise SettingError(f"{ORPHAN_MARGIN_HOURS.name}={margin.total_seconds() / 3600:g} is shorter than the longest "
                           f"run allowed ({longest / 3600:g} h, run_monitoring.max_runtime_seconds): a running job's "
                           "files could be deleted before it commits them")
    return retention, margin


@dg.op(description="Expire old snapshots and delete unreferenced files in every Iceberg table.")
def maintain_lakehouse(context: dg.OpExecutionContext, lakehouse: LakehouseResource, s3: LakeS3Resource) -> None:
    retention, margin = maintenance_windows(context.instance)
    catalog, client, now = lakehouse.catalog(), s3.get_client(), datetime.now(UTC)
    failed: dict[str, str] = {}
    tables = expired = deleted = young = 0
    for identifier in all_tables(catalog):
        name = ".".join(identifier)
        try:  # one table's problem never stops the others' maintenance
            report = maintain_table(catalog, identifier, client, retention=retention, margin=margin, now=now)
        except Exception as err:
            failed[name] = f"{type(err).__name__}: {err}"
            context.log.error("lakehouse maintenance of %s failed: %s", name, failed[name])
            continue
        tables += 1
        expired += report.expired_snapshots
        deleted += len(report.deleted_files)
        young += report.young_orphans
        if report.expired_snapshots or report.deleted_files:
            context.log.info("%s: %d snapshot(s) expired, %d kept, %d unreferenced file(s) deleted", name,
                             report.expired_snapshots, report.kept_snapshots, len(report.deleted_files))
    context.add_output_metadata({"tables": tables, "snapshots_expired": expired, "files_deleted": deleted,
                                 "unreferenced_files_too_young": young, "tables_failed": sorted(failed)},
                                output_name="result")
    if failed:
        raise dg.Failure(description="lakehouse maintenance failed for " + "; ".join(f"{t}: {e}" for t, e in
                                                                                    sorted(failed.items())),
                         metadata={"tables_failed": sorted(failed)})


@dg.job(name="lakehouse_maintenance", tags=max_runtime(hours=3),
        description="Daily: expire Iceberg snapshots past the retention and delete unreferenced files, every namespace.")
def lakehouse_maintenance() -> None:
    maintain_lakehouse()


lakehouse_maintenance_daily = dg.ScheduleDefinition(
    name="lakehouse_maintenance_daily", job=lakehouse_maintenance, cron_schedule="15 3 * * *",
    execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.RUNNING)
