"""A downstream asset of the published provider table: providers per specialty, per tenant.

provider keeps its own write-audit-publish (it reserves ids and publishes four companions after it);
it loads here as an input through the lakehouse IO manager from the tenant's namespace (only the
tenant of the run), and the count is written by it to omop_<tenant>.providers_per_specialty, one
Iceberg commit. The sensor below runs it for each tenant whose providers were published."""

import dagster as dg
import pyarrow as pa

from covid_lakehouse.defs.omop.assets import GROUP, PROVIDER_KEY
from covid_lakehouse.defs.omop.partitions import tenant_partitions
from covid_lakehouse.lib.follow import follow_sensor
from covid_lakehouse.lib.wap import Audit, AuditResult, audit_check_specs, audit_or_raise

SPECIALTIES_KEY = dg.AssetKey(["omop", "providers_per_specialty"])
SCHEMA = pa.schema([("specialty_concept_id", pa.int32()), ("specialty_source_value", pa.string()),
                    ("providers", pa.int64())])


def providers_per_specialty_table(provider: pa.Table) -> pa.Table:
    """One row per (specialty_concept_id, specialty_source_value); 0 is OMOP's "no matching concept"."""
    if provider.num_rows == 0:
        return SCHEMA.empty_table()
    counted = provider.group_by(["specialty_concept_id", "specialty_source_value"], use_threads=False).aggregate(
        [("provider_id", "count")])
    counted = counted.rename_columns(["specialty_concept_id", "specialty_source_value", "providers"])
    return counted.select(SCHEMA.names).cast(SCHEMA).sort_by([("providers", "descending"),
                                                              ("specialty_source_value", "ascending")])


def every_provider_counted(expected: int) -> Audit:
    def audit(counts: pa.Table) -> AuditResult:
        total = sum(counts["providers"].to_pylist())
        return AuditResult(total == expected, f"{total} providers counted of {expected} published",
                           {"counted": total, "published": expected})

    return Audit("every_provider_counted", audit, blocking=True,
                 description="the counts add up to the tenant's published providers")


AUDIT_SPECS = audit_check_specs(SPECIALTIES_KEY, [every_provider_counted(0)])


@dg.asset(
    key=SPECIALTIES_KEY,
    group_name=GROUP,
    kinds={"iceberg", "pyarrow"},
    partitions_def=tenant_partitions,
    ins={"provider": dg.AssetIn(PROVIDER_KEY)},
    io_manager_key="lakehouse_io_manager",
    check_specs=AUDIT_SPECS,
    metadata={"lakehouse/namespace": "omop_{partition}", "lakehouse/table": "providers_per_specialty",
              "lakehouse/partition_column": "tenant"},
    description="Providers per specialty (OMOP specialty_concept_id and the source value) of the tenant, from "
    "its published provider table; Iceberg table omop_<tenant>.providers_per_specialty.",
)
def providers_per_specialty(context: dg.AssetExecutionContext, provider: pa.Table):
    counts = providers_per_specialty_table(provider)
    audits = [every_provider_counted(provider.num_rows)]
    yield from audit_or_raise(audits, counts, asset_key=SPECIALTIES_KEY)  # before the IO manager commits
    context.log.info("tenant %s: %d providers in %d specialties", context.partition_key, provider.num_rows,
                     counts.num_rows)
    yield dg.Output(counts)


specialties_follow_providers = follow_sensor("omop_providers_per_specialty", PROVIDER_KEY, providers_per_specialty,
                                             one_run_per_partition=True)
