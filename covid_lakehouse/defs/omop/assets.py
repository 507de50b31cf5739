"""The omop assets. Per tenant (a partition of omop_tenants): landing files -> care_site -> provider
with its provenance, quarantine and flags, published as Iceberg tables in namespace omop_<tenant>
with write-audit-publish."""

import shutil
import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
from pydantic import ConfigDict

from covid_lakehouse.defs.omop import source_snapshot, tables
from covid_lakehouse.defs.omop.checks import (
    CARE_SITE_AUDITS,
    GATE_OP,
    LANDING_KEY,
    max_deleted_share,
    provider_audits,
)
from covid_lakehouse.defs.omop.extract import (
    CARE_SITE_SOURCE,
    extract,
    source_label,
)
from covid_lakehouse.defs.omop.fingerprint import Fingerprint, fingerprint
from covid_lakehouse.defs.omop.landing import list_landing
from covid_lakehouse.defs.omop.partitions import tenant_partitions
from covid_lakehouse.defs.omop.pipeline import (
    append_files,
    ingest_landing,
    last_run,
    processed_files,
    read_or_empty,
    record_signal,
    stage_append,
    stage_run,
    utc_now,
)
from covid_lakehouse.defs.omop.rules import load_specialty_map
from covid_lakehouse.defs.omop.tenants import NAMESPACE_PREFIX, Tenant, TenantConfigError, TenantsResource
from covid_lakehouse.defs.omop.transform import (
    FLAGS,
    ID_MAP_ADDITIONS,
    PROVENANCE,
    PROVIDER,
    QUARANTINE,
    CareSiteKeyError,
    ProviderBuild,
    Reconciliation,
    build_care_sites,
    build_providers,
)
from covid_lakehouse.lib.lakehouse import LakehouseResource, MaterializeRefused
from covid_lakehouse.lib.s3 import LakeS3Resource
from covid_lakehouse.lib.settings import SettingError
from covid_lakehouse.lib.wap import audit_check_specs

GROUP = "omop"
# Transient failures (database or S3 unreachable, an Iceberg commit racing another) are retried;
# bad data and bad configuration raise Failures that are not.
RETRY = dg.RetryPolicy(max_retries=3, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)

SOURCE_DB_KEY = dg.AssetKey(["omop", "source_database"])
CLIENT_FILES_KEY = dg.AssetKey(["omop", "client_files"])
CARE_SITE_KEY = dg.AssetKey(["omop", "care_site"])
PROVIDER_KEY = dg.AssetKey(["omop", "provider"])
PROVENANCE_KEY = dg.AssetKey(["omop", "provider_provenance"])
QUARANTINE_KEY = dg.AssetKey(["omop", "quarantine"])
FLAG_KEY = dg.AssetKey(["omop", "provider_flag"])
TENANT_ASSET_KEYS = [LANDING_KEY, CARE_SITE_KEY, PROVIDER_KEY, PROVENANCE_KEY, QUARANTINE_KEY, FLAG_KEY]
# Where a skipped tenant's "no change" observation goes: the gate and the table users look at (each
# event costs a store in the event log: one per tenant asset was the biggest part of a skipped run).
NO_CHANGE_KEYS = (LANDING_KEY, PROVIDER_KEY)

source_database = dg.AssetSpec(
    SOURCE_DB_KEY, group_name=GROUP, kinds={"postgres"},
    description="Each tenant's provider and care_site tables in its own PostgreSQL (the system of record), "
                "read with COPY TO (provider: only new and changed rows, by row hashes per provider_id, when "
                "the tenant's source_row snapshot can be trusted; care_site in full); the DSN comes from the environment variable the "
                "tenants file names.",
)
client_files = dg.AssetSpec(
    CLIENT_FILES_KEY, group_name=GROUP, kinds={"s3"},
    description="Client CSV and JSON provider drops under each tenant's landing prefix (raw/omop/landing/<tenant>/).",
)


def lakehouse_location(table: str) -> dict[str, str]:
    """Where the lakehouse IO manager finds a tenant's table when it loads it as an input."""
    return {"lakehouse/namespace": NAMESPACE_PREFIX + "{partition}", "lakehouse/table": table,
            "lakehouse/partition_column": "tenant"}


def _tenant(tenants: TenantsResource, name: str) -> Tenant:
    try:
        tenant = tenants.get(name)
        tenant.source_dsn()  # fail now, clearly, if its DSN variable is missing
        return tenant
    except TenantConfigError as err:
        raise dg.Failure(description=str(err), allow_retries=False) from err


class TenantRunConfig(dg.Config):
    # an unknown flag is refused, not ignored: run_flags validates a run's config with this model alone (e.g.
    # the replaced allow_mass_deletion would otherwise read as no confirmation, silently)
    model_config = ConfigDict(extra="forbid")

    full_refresh: bool = False  # run the tenant even if its sources' fingerprint is the recorded one
    # publish even when over checks.MAX_DELETED_SHARE of the source providers are gone, if exactly this many
    # are: an operator's confirmation of the count the blocked run named (a backfill's one count confirms no
    # tenant that lost another number; a yes/no confirmed every tenant it launched)
    allow_deleted_providers: int = 0


@dg.asset(
    key=LANDING_KEY, group_name=GROUP, partitions_def=tenant_partitions, deps=[CLIENT_FILES_KEY],
    retry_policy=RETRY, kinds={"s3", "iceberg"}, output_required=False,
    description="The gate of a tenant run, then its new client files. First the tenant's source fingerprint "
                "(source tables' row hashes and columns, the landing listing with ETags): when it equals the one "
                "the last successful run recorded, a 'no change' observation is logged and the run stops here "
                "(care_site and provider are skipped; config full_refresh: true forces the run). Otherwise new "
                "files are parsed as written into Iceberg tables landing_row (one row per line, with file and "
                "line number) and landing_file (the manifest: each object key + ETag once). Its metadata's "
                "full_refresh and allow_deleted_providers only show the run's config: the later steps read it from "
                "the run (run_flags), which a re-execution from failure keeps.",
)
def landing_files(context: dg.AssetExecutionContext, config: TenantRunConfig, s3: LakeS3Resource,
                  lakehouse: LakehouseResource, omop_tenants: TenantsResource):
    tenant = _tenant(omop_tenants, context.partition_key)
    client = s3.cached_client()
    # One listing, taken before any extract: a change after it is seen by the next run, never lost.
    objects = list_landing(client, tenant.landing_bucket, tenant.prefix)
    recorded = None if config.full_refresh else last_run(lakehouse, tenant.namespace)
    sources = fingerprint(tenant, objects, recorded)
    if recorded is not None and _unchanged_since(context, tenant, recorded, sources):
        context.log.info("tenant %s: no change since run %s (fingerprint %s, checked by %s): skipping extract, "
                         "transform and publish", tenant.name, recorded["run_id"], sources.digest, sources.checked)
        if sources.signal is not None and sources.signal != recorded.get("source_signal"):
            # The counters moved but the content did not (a rolled-back write, an update to the same
            # values): record the new signal so the next run need not hash the tables again.
            record_signal(lakehouse, tenant.namespace, sources.digest, sources.signal)
        for observation in no_change_observations(tenant.name, recorded, sources.summary()):
            context.log_event(observation)
        return
    report = ingest_landing(tenant, client, lakehouse, run_id=context.run_id, objects=objects)
    context.log.info("tenant %s: %d new file(s), %d row(s), %d rejected file(s), %d malformed row(s)",
                     tenant.name, report.files, report.rows, len(report.rejected_files), report.malformed_rows)
    yield dg.MaterializeResult(metadata={
        "new_files": report.files, "rows_read": report.rows, "malformed_rows": report.malformed_rows,
        "rejected_files": ", ".join(report.rejected_files) or "none",
        "landing": f"s3://{tenant.landing_bucket}/{tenant.prefix}", "full_refresh": config.full_refresh,
        "allow_deleted_providers": config.allow_deleted_providers, **sources.summary(),
    })


def no_change_observations(tenant: str, recorded: dict, checked: dict) -> list[dg.AssetObservation]:
    """The "no change" observations of a tenant whose sources are those its last successful run
    (``recorded``, its run_log row) published from; ``checked``: how that was established."""
    metadata = {"no_change": True, **checked, "source_rows_provider": recorded["source_rows"],
                "published_by_run": recorded["run_id"], "providers": recorded["providers"],
                "unchanged_assets": ", ".join(key.to_user_string() for key in TENANT_ASSET_KEYS)}
    return [dg.AssetObservation(asset_key=key, partition=tenant, metadata=metadata) for key in NO_CHANGE_KEYS]


def _unchanged_since(context: dg.AssetExecutionContext, tenant: Tenant, recorded: dict,
                     sources: Fingerprint) -> bool:
    """Whether the last successful run (its run_log row) recorded this fingerprint and its outputs are
    still the latest (no later run of a subset of the tenant's assets republished one of them)."""
    return recorded.get("source_fingerprint") == sources.digest and published_outputs_latest(
        context.instance, tenant.name, recorded["run_id"])


def published_outputs_latest(instance: dg.DagsterInstance, tenant: str, run_id: str) -> bool:
    """Whether the tenant's outputs were last materialized by run ``run_id`` (the run that recorded
    the fingerprint), not since republished by a run of a subset of its assets."""
    for key in (LANDING_KEY, CARE_SITE_KEY, PROVIDER_KEY):
        latest = _latest_materialization(instance, key, tenant)
        if latest is None or latest.run_id != run_id:
            return False
    return True


def _latest_materialization(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str):
    """The asset partition's latest materialization record, or None."""
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]),
                                              limit=1).records
    return records[0] if records else None


def _gate_metadata(context: dg.AssetExecutionContext, tenant: Tenant) -> dict | None:
    """The metadata of this run's gate (omop/landing_files); None when the gate was not part of this
    run (a subset run or a re-execution)."""
    record = _latest_materialization(context.instance, LANDING_KEY, tenant.name)
    if record is None or record.run_id != context.run_id:
        return None
    return record.asset_materialization.metadata


def run_flags(run_config: Mapping[str, Any]) -> TenantRunConfig:
    """The tenant run's flags (its gate's config), validated, from a run's whole config: how every step
    but the gate (which Dagster hands them typed) reads them. From the run, not the gate's metadata: a
    re-execution from failure carries its parent's config but not its gate. Invalid flags fail the step
    without retries (a retry would read the same config)."""
    ops = run_config.get("ops") or {}
    given = (ops.get(GATE_OP) or {}).get("config") or {}
    where = f"omop run config ops.{GATE_OP}.config"
    try:
        # Dagster's config also accepts {"env": NAME} for a scalar: resolved here as Dagster resolves it.
        flags = TenantRunConfig(**{name: _env_flag(f"{where}.{name}", value) if isinstance(value, dict) and
                                   set(value) == {"env"} else value for name, value in given.items()})
    except (ValueError, TypeError) as err:  # pydantic's ValidationError is a ValueError
        raise dg.Failure(description=f"{where}: {err}", allow_retries=False) from err
    if flags.allow_deleted_providers < 0:
        raise dg.Failure(description=f"{where}.allow_deleted_providers must be a count (0 or more), got {flags.allow_deleted_providers}",
                         allow_retries=False)
    return flags


def _env_flag(flag: str, value: dict) -> str:
    """A flag given as {"env": NAME}: the variable's value; unset, the step fails naming both (pydantic
    would only say the flag is not a valid value)."""
    resolved = dg.EnvVar(value["env"]).get_value()
    if resolved is None:
        raise dg.Failure(description=f"{flag} is given as the environment variable {value['env']}, which is not set",
                         allow_retries=False)
    return resolved


def _recorded_fingerprint(gate: dict | None) -> tuple[str | None, str | None]:
    """The fingerprint and signal this run's gate computed before any extract, from its metadata
    (_gate_metadata); None when the gate was not part of this run (a subset run or a re-execution): the
    next run then cannot skip."""
    if gate is None:
        return None, None
    digest, signal = gate.get("source_fingerprint"), gate.get("source_signal")
    return (digest.value if digest is not None else None,
            signal.value if signal is not None and signal.value != "none" else None)


@dg.asset(
    key=CARE_SITE_KEY, group_name=GROUP, partitions_def=tenant_partitions, deps=[SOURCE_DB_KEY, LANDING_KEY],
    check_specs=audit_check_specs(CARE_SITE_KEY, CARE_SITE_AUDITS), retry_policy=RETRY, kinds={"iceberg"},
    # Published below; loads as an input from the tenant's namespace (lib/io_managers/lakehouse.py).
    io_manager_key="lakehouse_io_manager", metadata=lakehouse_location(tables.T_CARE_SITE),
    description="OMOP CDM 5.4 care_site from the source database, with care_site_id kept stable by an id map "
                "keyed on the site code. After omop/landing_files only because that step decides whether the "
                "tenant changed at all.",
)
def care_site(context: dg.AssetExecutionContext, lakehouse: LakehouseResource, omop_tenants: TenantsResource):
    tenant = _tenant(omop_tenants, context.partition_key)
    ns = tenant.namespace
    # The extract (database) and the id map read (catalog and S3) wait on different servers: side by side.
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="omop-care-site") as pool:
        id_map = pool.submit(read_or_empty, lakehouse, ns, tables.T_CARE_SITE_ID_MAP, tables.ID_MAP)
        source = extract(tenant, "care_site", CARE_SITE_SOURCE)
        try:
            build = build_care_sites(source, id_map.result(), now=utc_now())
        except CareSiteKeyError as err:  # bad source data: a retry would meet it again
            raise dg.Failure(description=f"tenant '{tenant.name}', {source_label(tenant, 'care_site')}: {err}",
                             allow_retries=False) from err
        # Both writes are staged side by side (each waits on S3); the id map commits first: ids are
        # reserved before publishing, as when it was appended before the care sites were written.
        additions = pool.submit(stage_append, lakehouse, ns, tables.T_CARE_SITE_ID_MAP, build.id_map_additions)
        sites = pool.submit(lakehouse.stage, ns, tables.T_CARE_SITE, build.care_site)
        if (staged_additions := additions.result()) is not None:
            staged_additions.commit()
        staged_sites = sites.result()
    committed = yield from lakehouse.publish_staged(staged_sites, audits=CARE_SITE_AUDITS, asset_key=CARE_SITE_KEY)
    yield dg.MaterializeResult(metadata={
        "dagster/row_count": build.care_site.num_rows, "new_care_site_ids": build.new_ids,
        **lakehouse.snapshot_metadata(ns, tables.T_CARE_SITE, committed),
    })


_OUTPUTS = {
    PROVIDER_KEY: (tables.T_PROVIDER, tables.PROVIDER,
                   "OMOP CDM 5.4 provider (plus provider_type_concept_id) merged from the source database, the "
                   "system of record, and the client files; provider_id stable across runs."),
    PROVENANCE_KEY: (tables.T_PROVENANCE, tables.PROVENANCE,
                     "Where each provider came from: every source row (with its hash: new, changed, deleted) and "
                     "every client ProviderID/IDSource per file, with first and last seen."),
    QUARANTINE_KEY: (tables.T_QUARANTINE, tables.QUARANTINE,
                     "Rows and files that could not be used, with a reason code and the record as received."),
    FLAG_KEY: (tables.T_FLAG, tables.FLAG,
               "Published but flagged: NPI check digit failures, disagreements between sources (both values), "
               "unmapped specialties and sites, possible duplicates."),
}
# Only the audits' names and descriptions: no setting is read to declare them.
PROVIDER_AUDIT_SPECS = audit_check_specs(PROVIDER_KEY, provider_audits(Reconciliation(), (), (), max_share=1.0))


@dg.multi_asset(
    specs=[dg.AssetSpec(key, group_name=GROUP, description=description, kinds={"iceberg"},
                        deps=[SOURCE_DB_KEY, LANDING_KEY, CARE_SITE_KEY], metadata=lakehouse_location(table)
                        ).with_io_manager_key("lakehouse_io_manager")
           for key, (table, _, description) in _OUTPUTS.items()],
    check_specs=PROVIDER_AUDIT_SPECS, partitions_def=tenant_partitions, retry_policy=RETRY, name="omop_provider",
)
def provider(context: dg.AssetExecutionContext, lakehouse: LakehouseResource, omop_tenants: TenantsResource):
    tenant = _tenant(omop_tenants, context.partition_key)
    ns = tenant.namespace
    try:  # read once: a malformed setting fails now, not after the extract and the transform
        max_share = max_deleted_share()
    except SettingError as err:
        raise dg.Failure(description=str(err), allow_retries=False) from err
    flags = run_flags(context.run.run_config)
    gate = _gate_metadata(context, tenant)  # one event-log read: the fingerprint its gate computed
    # The extract (database) and the state reads (S3) wait on different servers: run them side by side.
    # The extract streams into a parquet file DuckDB scans: the source never sits in Python memory.
    with tempfile.TemporaryDirectory(prefix="omop-provider-") as scratch, \
            ThreadPoolExecutor(max_workers=4, thread_name_prefix="omop-read") as pool:
        # Incremental when the tenant's source snapshot can be trusted: only new and changed rows cross
        # the network (source_snapshot.py); the file is the whole source either way.
        source = pool.submit(source_snapshot.extract_provider, tenant, lakehouse, Path(scratch) / "source",
                             full_refresh=flags.full_refresh)
        # The tenant-sized state tables (the whole landing history, id map, previous provenance) as copies
        # of their parquet files that DuckDB scans (and spills from): read into Arrow, a rerun's memory
        # grew with the tenant. The small ones are read whole.
        state_dir = Path(scratch) / "state"
        state = {name: pool.submit(lakehouse.materialize, ns, table, state_dir / name) for name, table in {
            "landing_rows": tables.T_LANDING_ROW, "landing_files": tables.T_LANDING_FILE,
            "id_map": tables.T_PROVIDER_ID_MAP, "previous_provenance": tables.T_PROVENANCE,
        }.items()}
        care_sites = pool.submit(read_or_empty, lakehouse, ns, tables.T_CARE_SITE, tables.CARE_SITE)
        processed = pool.submit(processed_files, lakehouse, ns)
        try:
            inputs = {name: future.result() for name, future in state.items()}
            extracted = source.result()  # it materializes the source_row snapshot
        except MaterializeRefused as err:  # the table's layout, not a passing fault: a retry would meet it again
            raise dg.Failure(description=f"tenant '{tenant.name}': {err}", allow_retries=False) from err
        processed, care_sites = processed.result(), care_sites.result()
        context.log.info("tenant %s: %s", tenant.name, extracted.describe())
        # The extract is the next run's snapshot: committed while the transform runs (a cache of source
        # rows with their hashes, never of what was published: see source_snapshot.py).
        snapshot_write = pool.submit(source_snapshot.store, lakehouse, ns, extracted)
        # Every output streams into a parquet file in the scratch directory, then from there to S3.
        outputs = Path(scratch) / "outputs"
        outputs.mkdir()
        build = build_providers(source=extracted.path, source_object=source_label(tenant, "provider"),
                                processed_files=processed, specialties=load_specialty_map(), now=utc_now(),
                                care_sites=care_sites, out_dir=outputs, **inputs)
        shutil.rmtree(state_dir, ignore_errors=True)  # not needed past the build: free the disk for the publish
        pool.shutdown()
        if not snapshot_write.result():
            context.log.warning("tenant %s: another run stored the source_row snapshot meanwhile; it is kept (a "
                                "cache of source rows either way)", tenant.name)
        counts, files, rows = build.counts, build.files, build.rows
        context.log.info("tenant %s: %s", tenant.name, counts)
        # ids reserved before publishing
        append_files(lakehouse, ns, tables.T_PROVIDER_ID_MAP, files[ID_MAP_ADDITIONS], tables.ID_MAP)
        audits = provider_audits(counts, care_sites["care_site_id"].to_pylist(), [files[FLAGS]],
                                 max_share=max_share, allow_deleted_providers=flags.allow_deleted_providers)
        committed = yield from lakehouse.publish_files(ns, tables.T_PROVIDER, [files[PROVIDER]], tables.PROVIDER,
                                                       audits=audits, asset_key=PROVIDER_KEY)
        # Named from the table the commit returned: a catalog load could see another run's later commit.
        provider_snapshot = lakehouse.snapshot_metadata(ns, tables.T_PROVIDER, committed)
        # The provider snapshot is published; its companions follow, side by side (a failure here is
        # retried and, the run being deterministic, republishes the same provider rows).
        companions = [(tables.T_PROVENANCE, PROVENANCE, tables.PROVENANCE), (tables.T_QUARANTINE, QUARANTINE, tables.QUARANTINE),
                      (tables.T_FLAG, FLAGS, tables.FLAG)]
        # Alongside them: the run_log row staged (its commit waits).
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="omop-publish") as publish:
            published = [publish.submit(list, lakehouse.publish_files(ns, table, [files[output]], schema))
                         for table, output, schema in companions]
            run_log = publish.submit(stage_run, lakehouse, ns, tables.conform(
                _run_log_row(context.run_id, build, *_recorded_fingerprint(gate)), tables.RUN_LOG))
            # Every companion (and the run_log staging) is waited for, and every failure reported: one is
            # raised, the others ride on it as notes (a retry meets them all; the operator should see them
            # all). A failure that must not be retried goes first: else a retry would redo the extract and
            # the transform to meet it again.
            if failures := [err for done in (*published, run_log) if (err := done.exception()) is not None]:
                failures.sort(key=lambda err: not (isinstance(err, dg.Failure) and err.allow_retries is False))
                for other in failures[1:]:
                    failures[0].add_note(f"also failed: {type(other).__name__}: {other}")
                raise failures[0]
            staged_run = run_log.result()
        quarantine_counts, flag_counts = build.quarantine_counts(), build.flag_counts()
    # The last write of a tenant run: the fingerprint counts as recorded only once everything committed.
    staged_run.commit()
    yield dg.MaterializeResult(asset_key=PROVIDER_KEY, metadata={
        "dagster/row_count": rows[PROVIDER],
        "dagster/column_schema": _column_schema(tables.PROVIDER),
        "source_rows": counts.source_rows, "source_new": counts.source_new, "source_changed": counts.source_changed,
        "source_unchanged": counts.source_unchanged, "source_deleted": counts.source_deleted,
        "files_this_run": counts.run_files, "file_rows_read": counts.run_file_rows_read,
        "file_rows_new": counts.run_file_rows_new, "file_rows_merged": counts.run_file_rows_merged,
        "file_rows_quarantined": counts.run_file_rows_quarantined, **extracted.metadata(),
        **provider_snapshot,
    })
    yield dg.MaterializeResult(asset_key=PROVENANCE_KEY, metadata={"dagster/row_count": rows[PROVENANCE]})
    yield dg.MaterializeResult(asset_key=QUARANTINE_KEY, metadata={
        "dagster/row_count": rows[QUARANTINE], "reasons": dg.MetadataValue.json(quarantine_counts)})
    yield dg.MaterializeResult(asset_key=FLAG_KEY, metadata={
        "dagster/row_count": rows[FLAGS], "flags": dg.MetadataValue.json(flag_counts)})


def _run_log_row(run_id: str, build: ProviderBuild, source_fingerprint: str | None,
                 source_signal: str | None) -> pa.Table:
    c = build.counts
    return pa.Table.from_pylist([{
        "run_id": run_id, "finished_at": utc_now(), "source_rows": c.source_rows, "source_new": c.source_new,
        "source_changed": c.source_changed, "source_unchanged": c.source_unchanged, "source_deleted": c.source_deleted,
        "source_quarantined": c.source_quarantined, "files": c.run_files, "file_rows_read": c.run_file_rows_read,
        "file_rows_new": c.run_file_rows_new, "file_rows_merged": c.run_file_rows_merged,
        "file_rows_quarantined": c.run_file_rows_quarantined, "providers": c.providers,
        "flags": build.rows[FLAGS], "processed_files": build.run_files, "source_fingerprint": source_fingerprint,
        "source_signal": source_signal,
    }])


def _column_schema(schema: pa.Schema) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(f.name, str(f.type)) for f in schema])
