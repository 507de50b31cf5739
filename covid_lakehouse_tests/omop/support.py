"""Helpers shared by the omop tests (fixtures are in conftest.py)."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from covid_lakehouse.defs.omop import tables
from covid_lakehouse.defs.omop.assets import PROVIDER_KEY, TENANT_ASSET_KEYS, TenantRunConfig, landing_files
from covid_lakehouse.defs.omop.definitions import defs as omop_defs
from covid_lakehouse.defs.omop.extract import CARE_SITE_SOURCE, PROVIDER_SOURCE, extract, extract_parquet
from covid_lakehouse.defs.omop.landing import parse_landing_file
from covid_lakehouse.defs.omop.partitions import TENANT_PARTITIONS_NAME
from covid_lakehouse.defs.omop.rules import load_specialty_map
from covid_lakehouse.defs.omop.tenants import Tenant, TenantsResource
from covid_lakehouse.defs.omop.transform import build_care_sites
from covid_lakehouse.lib.lakehouse import LakehouseResource
from covid_lakehouse.lib.policies import rebuilt
from covid_lakehouse.lib.resources import platform_resources
from covid_lakehouse_dev.seeds.omop import SAMPLE_FILE

SAMPLE_CSV = SAMPLE_FILE.read_bytes()


def gate_config(**flags) -> dict:
    """Run config giving a tenant run these flags (TenantRunConfig): under the gate's op name, where
    Dagster puts its config and the later steps read it (assets.run_flags). Checked here, so a misspelt or
    mistyped flag fails the test instead of the run."""
    TenantRunConfig(**flags)
    return {"ops": {landing_files.op.name: {"config": flags}}}


# Run config forcing a tenant run even when its sources did not change.
FULL_REFRESH = gate_config(full_refresh=True)


@dataclass
class OmopEnv:
    """A few tenants of one tenants file, and what a test needs to drive them."""

    tenants: list[Tenant]
    resource: TenantsResource
    path: Path

    @property
    def tenant(self) -> Tenant:
        return self.tenants[0]

    def defs(self) -> dg.Definitions:
        return rebuilt(omop_defs, resources={**platform_resources(), "omop_tenants": self.resource})


def write_tenants(path: Path, tenants: list[Tenant]) -> None:
    lines = ["tenants:"]
    for t in tenants:
        lines += [f"  - name: {t.name}", f"    source_dsn_env: {t.source_dsn_env}",
                  f"    source_schema: {t.source_schema}", f"    landing_bucket: {t.landing_bucket}"]
        lines += [f"    landing_prefix: {t.landing_prefix}"] if t.landing_prefix else []
        lines += ["    demo: true"] if t.demo else []
    path.write_text("\n".join(lines) + "\n")


def drop_file(s3, tenant: Tenant, name: str, body: bytes) -> str:
    key = tenant.prefix + name
    s3.get_client().upload_fileobj(io.BytesIO(body), tenant.landing_bucket, key)
    return key


# Where tenant_job finds its tenants file: a reconstructable job is loaded again by Dagster, without arguments.
TENANTS_FILE_ENV = "OMOP_TEST_TENANTS_FILE"


def tenant_job() -> dg.JobDefinition:
    """omop_tenant_job (the sensors' job) over the tenants file TENANTS_FILE_ENV names, for dg.reconstructable:
    a re-execution from failure (execute_job) needs a job Dagster can load again, which
    execute_in_process's is not."""
    resource = TenantsResource(tenants_file=os.environ[TENANTS_FILE_ENV])
    return rebuilt(omop_defs, resources={**platform_resources(), "omop_tenants": resource}
                   ).resolve_job_def("omop_tenant_job")


def fail_commits(monkeypatch, namespace: str, *failing: str, allow_retries: bool = False,
                 before_failing: Callable[[str], object] | None = None) -> None:
    """Make the commit of each table in ``failing`` of ``namespace`` raise (as a catalog refusing it would),
    after ``before_failing(table)`` when given; every other commit goes through. Undone with ``monkeypatch``.
    The failure says "commit of <table> failed (test)"."""
    real_commit = LakehouseResource._commit

    def commit(self, tx, ns, table, *args, **kwargs):
        if ns == namespace and table in failing:
            if before_failing is not None:
                before_failing(table)
            raise dg.Failure(description=f"commit of {table} failed (test)", allow_retries=allow_retries)
        return real_commit(self, tx, ns, table, *args, **kwargs)

    monkeypatch.setattr(LakehouseResource, "_commit", commit)


def run_tenant(env: OmopEnv, tenant: Tenant, instance: dg.DagsterInstance, **kwargs) -> dg.ExecuteInProcessResult:
    """One run of the tenant's partition, as a sensor or the schedule would request it."""
    if tenant.name not in instance.get_dynamic_partitions(TENANT_PARTITIONS_NAME):
        instance.add_dynamic_partitions(TENANT_PARTITIONS_NAME, [tenant.name])
    job = env.defs().resolve_implicit_global_asset_job_def()
    return job.execute_in_process(instance=instance, asset_selection=TENANT_ASSET_KEYS, partition_key=tenant.name,
                                  **kwargs)


def rows_by(table: pa.Table, column: str) -> dict:
    """Rows of a small table keyed by one column's values."""
    return {row[column]: row for row in table.to_pylist()}


# Published tables of a tenant and the columns a rerun legitimately rewrites (load timestamps).
OUTPUTS = {
    tables.T_PROVIDER: (), tables.T_CARE_SITE: (), tables.T_FLAG: (),
    tables.T_QUARANTINE: ("detected_at",),
    tables.T_PROVENANCE: ("first_seen_at", "last_seen_at", "last_changed_at"),
}


def published(lakehouse, namespace: str) -> dict[str, pa.Table]:
    """Each published table, minus its load-timestamp columns, in a canonical row order."""
    result = {}
    for table, excluded in OUTPUTS.items():
        data = lakehouse.read(namespace, table).drop_columns(list(excluded))
        result[table] = data.sort_by([(name, "ascending") for name in data.column_names])
    return result


def normalized(lakehouse, tenant) -> dict:
    """The tenant's published tables with its own landing prefix and source schema cut out of object
    names, so two tenants fed the same sources compare equal."""
    result = {}
    for table, data in published(lakehouse, tenant.namespace).items():
        if "source_object" in data.column_names:
            index = data.column_names.index("source_object")
            objects = pc.replace_substring(data["source_object"], tenant.prefix, "<prefix>/")
            objects = pc.replace_substring(objects, tenant.source_schema + ".", "<schema>.")
            data = data.set_column(index, "source_object", objects)
            data = data.sort_by([(name, "ascending") for name in data.column_names])
        result[table] = data
    return result


def provider_metadata(result: dg.ExecuteInProcessResult) -> dict:
    """The omop/provider materialization's metadata values of a run (empty when it did not publish)."""
    for event in result.get_asset_materialization_events():
        if event.asset_key == PROVIDER_KEY:
            return {name: value.value for name, value in event.materialization.metadata.items()}
    return {}


def source_rows(pg, tenant: Tenant) -> dict[int, str]:
    """The provider source rows as the extract reads them (its columns, as row text), by provider_id:
    the oracle of which rows an incremental extract must fetch."""
    columns = sql.SQL(", ").join(sql.Identifier(name) for name in PROVIDER_SOURCE.names)
    return dict(pg.execute(sql.SQL("SELECT provider_id, row({})::text FROM {}").format(
        columns, sql.Identifier(tenant.source_schema, "provider"))).fetchall())


def source_changes(before: dict[int, str], after: dict[int, str]) -> tuple[int, int]:
    """(rows new or changed, rows deleted) between two source_rows readings."""
    return (sum(1 for key, row in after.items() if before.get(key) != row),
            sum(1 for key in before if key not in after))


def execute_on_provider(pg, tenant, statement: str) -> None:
    pg.execute(sql.SQL(statement).format(t=sql.Identifier(tenant.source_schema, "provider")))
    flush_stats(pg)


def flush_stats(pg) -> None:
    """Make this session's statistics visible now. A writer's counters reach pg_stat_user_tables when
    its session goes idle, at most once a second: a change made less than a second after another
    would otherwise count only later (for the gate: as if it had come after it, see fingerprint.py)."""
    pg.execute("select pg_stat_force_next_flush()")


# Each kind of change, applied to the tenant's sources in turn. TRUNCATE + reload of the same rows is
# not among them: the content is the same, so is the fingerprint, and skipping is right (see below).
CHANGES = {
    "insert": lambda pg, s3, t: execute_on_provider(pg, t, "INSERT INTO {t} (provider_name, npi, specialty, care_site) "
                                                "VALUES ('Ada Byron', '1000000001', 'Cardiology', 'Metro Med')"),
    "update": lambda pg, s3, t: execute_on_provider(pg, t, "UPDATE {t} SET provider_name = 'Grace Hopper' "
                                                "WHERE provider_id = 7"),
    "delete": lambda pg, s3, t: execute_on_provider(pg, t, "DELETE FROM {t} WHERE provider_id = 9"),
    # Same row count after the pair: a count or a max(id) would not see it.
    "insert+delete": lambda pg, s3, t: execute_on_provider(
        pg, t, "WITH gone AS (DELETE FROM {t} WHERE provider_id = 11 RETURNING provider_name, specialty, care_site) "
               "INSERT INTO {t} (provider_id, provider_name, npi, specialty, care_site) "
               "SELECT 100011, provider_name, '1000000002', specialty, care_site FROM gone"),
    # Same row count, same storage file, same ids: only the counters (and the content) tell.
    "update, same size": lambda pg, s3, t: execute_on_provider(pg, t, "UPDATE {t} SET npi = reverse(npi) WHERE provider_id = 5"),
    "truncate + reload, one row changed": lambda pg, s3, t: execute_on_provider(
        pg, t, "CREATE TEMP TABLE reload AS SELECT * FROM {t}; TRUNCATE {t}; "
               "INSERT INTO {t} SELECT * FROM reload; UPDATE {t} SET provider_name = 'Ada Lovelace' "
               "WHERE provider_id = 13; DROP TABLE reload"),
    "column added": lambda pg, s3, t: execute_on_provider(pg, t, "ALTER TABLE {t} ADD COLUMN dea varchar(20)"),
    # The rows' text is the same after the retype: only the column definitions tell.
    "column retyped": lambda pg, s3, t: execute_on_provider(pg, t, "ALTER TABLE {t} ALTER COLUMN specialty TYPE text"),
    "new file": lambda pg, s3, t: drop_file(s3, t, "d2/more.csv", b"ProviderName,ProviderID,NPI\n"
                                                                  b"Lin Wu,501,1000000002\n"),
    "file replaced, same key": lambda pg, s3, t: drop_file(s3, t, "d2/more.csv", b"ProviderName,ProviderID,NPI\n"
                                                                                 b"Lin Wu,501,1000000001\n"),
    # Taken-in rows stay in landing_row: the outputs need not change, but the run is not skipped.
    "file deleted": lambda pg, s3, t: s3.get_client().delete_object(Bucket=t.landing_bucket, Key=t.prefix + "d2/more.csv"),
}


def first_build_inputs(tenant: Tenant, scratch: Path, now: datetime) -> dict:
    """build_providers' arguments for a tenant's first run: its source extracted to a parquet file in
    ``scratch``, the sample file as its only landing file (taken in at ``now``), no previous state."""
    parsed = parse_landing_file("sample.csv", SAMPLE_CSV)
    info = {"object_key": "sample.csv", "etag": "e1", "object_last_modified": now, "ingested_at": now}
    return {
        "source": extract_parquet(tenant, "provider", PROVIDER_SOURCE, scratch / "source.parquet"),
        "source_object": "postgres:src.provider", "processed_files": [],
        "care_sites": build_care_sites(extract(tenant, "care_site", CARE_SITE_SOURCE), tables.ID_MAP.empty_table(),
                                       now=now).care_site,
        "landing_rows": tables.conform(pa.Table.from_pylist([{**r, **info} for r in parsed.rows]), tables.LANDING_ROW),
        "landing_files": tables.conform(pa.Table.from_pylist([{**info, "status": "loaded"}]), tables.LANDING_FILE),
        "id_map": tables.ID_MAP.empty_table(), "previous_provenance": tables.PROVENANCE.empty_table(),
        "specialties": load_specialty_map(), "now": now,
    }
