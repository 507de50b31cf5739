"""omop at the seed's scale: one tenant run over 2,000,000 source providers plus a day of client files
(the sample, a 5,000-row CSV and a 1,000-record JSON drop), against a plain script doing the same
extract (COPY TO) and writing the same rows as parquet to the same S3. Target: 3x.

The run measured is a tenant's first (empty namespace: every id, provenance row and flag is new);
the framework also cleans, maps, merges, audits and writes provenance, quarantine and flags, which
the floor does not. Seeding 2,000,000 providers is reported against a plain COPY of the same rows
(its own target: under 30 s)."""

from __future__ import annotations

import io
import json
import os
import tempfile
import uuid
from pathlib import Path

from benchmarks.harness import case, measure, result, timed

PROVIDERS = 2_000_000
TARGET = 3.0
SOURCE_SCHEMA = "bench_omop_source"
LANDING_PREFIX = "bench/omop/landing/day1/"
_TMP = Path(tempfile.gettempdir()) / "covid_lakehouse_bench_omop"


def _dsn() -> str:
    return os.environ["WAREHOUSE_DSN"]


def day_files(providers: int) -> dict[str, bytes]:
    """A day's drops: 4,000 rows about providers in the source (matched by NPI, names and specialties
    written the client's way), 1,000 new ones, 1,000 JSON records, and the seed's sample."""
    import numpy as np

    from covid_lakehouse.defs.omop.rules import npi_check_digits
    from covid_lakehouse.defs.omop.seed import SAMPLE_FILE, SPECIALTY_VARIANTS, provider_rows

    known = provider_rows(providers, 0.02, 0).slice(providers // 2, 5_000).to_pylist()
    lines = ["ProviderName,ProviderID,NPI,Specialty,SiteName,SourceID,SpecSource,IDSource"]
    for i, row in enumerate(known[:4_000]):
        specialty = SPECIALTY_VARIANTS.get(row["specialty"] or "", row["specialty"] or "")
        lines.append(f"Dr. {row['provider_name']},{i:05d},{row['npi']},{specialty},{row['care_site'] or ''},"
                     f"{row['provider_source_value']},{row['specialty'] or ''},{row['provider_id_source_value']}")
    bases = np.arange(990_000_000, 990_001_000, dtype=np.int64)
    new_npis = [str(n) for n in (bases * 10 + npi_check_digits(bases))]
    for i, npi in enumerate(new_npis):
        lines.append(f"New Provider {i},N{i:05d},{npi},Peds,Metro Med,NP{i:05d},Pediatrics,NP-NPI")
    records = [{"ProviderName": row["provider_name"], "ProviderID": f"J{i}", "NPI": row["npi"],
                "Specialty": row["specialty"], "SiteName": row["care_site"], "SourceID": row["provider_source_value"]}
               for i, row in enumerate(known[4_000:])]
    return {"sample.csv": SAMPLE_FILE.read_bytes(), "update.csv": ("\n".join(lines) + "\n").encode(),
            "update.json": json.dumps(records).encode()}


def prepare(providers: int = PROVIDERS) -> None:
    """Seed the source and drop the day's files, once per benchmark session (outside any timing)."""
    import boto3

    from covid_lakehouse.defs.omop.seed import seed_source

    seed_source(_dsn(), providers=providers, schema=SOURCE_SCHEMA)
    client = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT_URL"], region_name="us-east-1")
    for name, body in day_files(providers).items():
        client.put_object(Bucket="raw", Key=LANDING_PREFIX + name, Body=body)


# ---- the framework: one tenant partition run -------------------------------------------------------
def measure_dagster(providers: int = PROVIDERS) -> tuple[float, int]:
    import dagster as dg

    from covid_lakehouse.defs.omop import build_defs
    from covid_lakehouse.defs.omop.assets import TENANT_ASSET_KEYS
    from covid_lakehouse.defs.omop.partitions import TENANT_PARTITIONS_NAME
    from covid_lakehouse.defs.omop.tenants import TenantsResource
    from covid_lakehouse.lib.resources import platform_resources

    tenant = "bench_" + uuid.uuid4().hex[:8]  # a fresh namespace: a first run
    _TMP.mkdir(parents=True, exist_ok=True)
    path = _TMP / f"{tenant}.yaml"
    path.write_text(f"tenants:\n  - {{name: {tenant}, source_dsn_env: WAREHOUSE_DSN, source_schema: {SOURCE_SCHEMA}, "
                    f"landing_prefix: {LANDING_PREFIX}}}\n")
    defs = dg.Definitions.merge(build_defs(TenantsResource(tenants_file=str(path))),
                                dg.Definitions(resources=platform_resources()))
    job = defs.resolve_implicit_global_asset_job_def()
    with dg.DagsterInstance.ephemeral() as instance:  # created before the clock starts, as in a deployment
        instance.add_dynamic_partitions(TENANT_PARTITIONS_NAME, [tenant])

        def run() -> int:
            outcome = job.execute_in_process(instance=instance, asset_selection=TENANT_ASSET_KEYS,
                                             partition_key=tenant)
            if not outcome.success:
                raise RuntimeError("omop benchmark run failed")
            [event] = [e for e in outcome.get_asset_materialization_events()
                       if e.asset_key.to_user_string() == "omop/provider"]
            return event.materialization.metadata["dagster/row_count"].value

        try:
            return timed(run)
        finally:
            _drop_namespace("omop_" + tenant)


def _drop_namespace(namespace: str) -> None:
    from covid_lakehouse.lib.lakehouse import LakehouseResource
    from covid_lakehouse.lib.settings import ServiceSettings

    catalog = LakehouseResource.from_settings(ServiceSettings.from_env()).catalog()
    for ident in catalog.list_tables(namespace):
        catalog.purge_table(ident)
    catalog.drop_namespace(namespace)


# ---- the floor: extract and write the same rows as parquet, nothing else ---------------------------
def measure_floor(providers: int = PROVIDERS) -> tuple[float, int]:
    import boto3
    import psycopg
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq
    from pyarrow import fs

    endpoint = os.environ["S3_ENDPOINT_URL"]
    s3fs = fs.S3FileSystem(endpoint_override=endpoint.split("://", 1)[1], scheme=endpoint.split("://", 1)[0],
                           region="us-east-1", force_virtual_addressing=False,
                           access_key=os.environ["AWS_ACCESS_KEY_ID"], secret_key=os.environ["AWS_SECRET_ACCESS_KEY"])
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    out = f"lakehouse/bench_floor/{uuid.uuid4().hex[:8]}"

    def work() -> int:
        rows = 0
        with psycopg.connect(_dsn()) as conn:
            for table in ("care_site", "provider"):
                buffer = io.BytesIO()
                with conn.cursor().copy(f"COPY {SOURCE_SCHEMA}.{table} TO STDOUT (FORMAT csv, HEADER)") as copy:
                    for chunk in copy:
                        buffer.write(chunk)
                buffer.seek(0)
                data = pacsv.read_csv(buffer, convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
                pq.write_table(data, f"{out}/{table}.parquet", filesystem=s3fs)
                rows = data.num_rows
        for item in client.list_objects_v2(Bucket="raw", Prefix=LANDING_PREFIX)["Contents"]:
            body = client.get_object(Bucket="raw", Key=item["Key"])["Body"].read()
            if item["Key"].endswith(".json"):
                data = pajson.read_json(io.BytesIO(b"\n".join(json.dumps(r).encode() for r in json.loads(body))))
            else:
                data = pacsv.read_csv(io.BytesIO(body), convert_options=pacsv.ConvertOptions(
                    column_types={"ProviderID": pa.string(), "NPI": pa.string()}))
            pq.write_table(data, f"{out}/{item['Key'].rsplit('/', 1)[-1]}.parquet", filesystem=s3fs)
        return rows

    return timed(work)


# ---- seeding ------------------------------------------------------------------------------------------
def measure_seed(providers: int = PROVIDERS) -> tuple[float, int]:
    from covid_lakehouse.defs.omop.seed import seed_source

    return timed(lambda: seed_source(_dsn(), providers=providers, schema="bench_omop_seed").providers)


def measure_seed_floor(providers: int = PROVIDERS) -> tuple[float, int]:
    """COPY of the same rows, already generated and encoded, into a table without constraints."""
    import psycopg
    import pyarrow.csv as pacsv

    from covid_lakehouse.defs.omop.seed import PROVIDER_COLUMNS, provider_rows

    buffer = io.BytesIO()
    pacsv.write_csv(provider_rows(providers, 0.02, 0), buffer, pacsv.WriteOptions(include_header=False))

    def work() -> int:
        with psycopg.connect(_dsn()) as conn:
            conn.execute("DROP TABLE IF EXISTS bench_omop_seed_floor")
            conn.execute("CREATE TABLE bench_omop_seed_floor (" + ", ".join(f"{c} text" for c in PROVIDER_COLUMNS) + ")")
            with conn.cursor().copy("COPY bench_omop_seed_floor FROM STDIN (FORMAT csv)") as copy:
                copy.write(buffer.getbuffer())
        return providers

    return timed(work)


@case("omop_tenant_run_2m")
def run() -> list:
    prepare()
    baseline = measure("benchmarks.common", "empty_asset")
    floor = measure("benchmarks.omop", "floor")
    dagster = measure("benchmarks.omop", "dagster")
    seed_floor = measure("benchmarks.omop", "seed_floor", repeat=1)
    seeding = measure("benchmarks.omop", "seed", repeat=1)
    return [result("omop_tenant_run_2m", dagster, floor, baseline, target_ratio=TARGET),
            result("omop_seed_2m", seeding, seed_floor, baseline, target_ratio=None)]
