"""The Iceberg tables of a tenant's namespace (omop_<tenant>) and their exact Arrow schemas: outputs are
cast to these so a run never drifts a column's type (an all-NULL column stays a string)."""

from __future__ import annotations

import pyarrow as pa

from covid_lakehouse.defs.omop.extract import PROVIDER_SOURCE

TS = pa.timestamp("us", tz="UTC")

# OMOP CDM 5.4 provider, plus the seed's provider_type_concept_id.
PROVIDER = pa.schema([
    ("provider_id", pa.int64()),
    ("provider_name", pa.string()),
    ("npi", pa.string()),
    ("dea", pa.string()),
    ("specialty_concept_id", pa.int32()),
    ("care_site_id", pa.int64()),
    ("year_of_birth", pa.int32()),
    ("gender_concept_id", pa.int32()),
    ("provider_source_value", pa.string()),
    ("specialty_source_value", pa.string()),
    ("specialty_source_concept_id", pa.int32()),
    ("gender_source_value", pa.string()),
    ("gender_source_concept_id", pa.int32()),
    ("provider_type_concept_id", pa.int32()),
])
# OMOP CDM 5.4 care_site.
CARE_SITE = pa.schema([
    ("care_site_id", pa.int64()),
    ("care_site_name", pa.string()),
    ("place_of_service_concept_id", pa.int32()),
    ("location_id", pa.int64()),
    ("care_site_source_value", pa.string()),
    ("place_of_service_source_value", pa.string()),
])
# Where each provider came from: one row per source database row (with its hash, for change
# detection) and per (provider, client id, file). Tables are written unsorted: queries sort.
PROVENANCE = pa.schema([
    ("provider_id", pa.int64()),
    ("source_system", pa.string()),  # postgres | client_file
    ("source_key", pa.string()),  # source provider_id, or the file's ProviderID as written ("001")
    ("id_source", pa.string()),  # provider_id_source_value, or the file's IDSource
    ("source_object", pa.string()),  # postgres:<schema>.provider, or the file's S3 key
    ("status", pa.string()),  # published | quarantined | deleted (gone from the source)
    ("row_hash", pa.int64()),  # of a source row's raw values, to tell changed rows from unchanged
    ("first_seen_at", TS),
    ("last_seen_at", TS),
    ("last_changed_at", TS),
])
QUARANTINE = pa.schema([
    ("source_system", pa.string()),
    ("source_object", pa.string()),
    ("source_key", pa.string()),  # source provider_id, or the file's line (record) number
    ("reason", pa.string()),
    ("detail", pa.string()),
    ("record", pa.string()),  # the row as received (JSON), for the partner to fix
    ("detected_at", TS),
])
# Kept-but-flagged findings: check digits, conflicts between sources, unmapped values, possible
# duplicates.
FLAG = pa.schema([
    ("provider_id", pa.int64()),
    ("flag", pa.string()),
    ("column_name", pa.string()),
    ("value", pa.string()),  # the published value
    ("other_value", pa.string()),  # the disagreeing or unusable source value
    ("related_provider_id", pa.int64()),
    ("source_system", pa.string()),
    ("source_object", pa.string()),
    ("source_key", pa.string()),
    ("detail", pa.string()),
])
LANDING_FILE = pa.schema([
    ("object_key", pa.string()),
    ("etag", pa.string()),
    ("size_bytes", pa.int64()),
    ("object_last_modified", TS),
    ("format", pa.string()),
    ("status", pa.string()),  # loaded | rejected
    ("reason", pa.string()),
    ("detail", pa.string()),
    ("rows_read", pa.int64()),
    ("rows_malformed", pa.int64()),
    ("ingested_at", TS),
    ("run_id", pa.string()),
])
LANDING_ROW = pa.schema([
    ("object_key", pa.string()),
    ("etag", pa.string()),
    ("object_last_modified", TS),
    ("line_no", pa.int64()),
    ("provider_name", pa.string()),
    ("provider_id", pa.string()),
    ("npi", pa.string()),
    ("specialty", pa.string()),
    ("site_name", pa.string()),
    ("source_id", pa.string()),
    ("spec_source", pa.string()),
    ("id_source", pa.string()),
    ("malformed_reason", pa.string()),
    ("raw_record", pa.string()),
    ("ingested_at", TS),
])
# Natural key -> surrogate id, append-only: ids stay stable across runs.
ID_MAP = pa.schema([("natural_key", pa.string()), ("id", pa.int64()), ("first_seen_at", TS)])
# One row per successful provider run: the counts, the files it took in, the sources' fingerprint.
RUN_LOG = pa.schema([
    ("run_id", pa.string()),
    ("finished_at", TS),
    ("source_rows", pa.int64()),
    ("source_new", pa.int64()),
    ("source_changed", pa.int64()),
    ("source_unchanged", pa.int64()),
    ("source_deleted", pa.int64()),
    ("source_quarantined", pa.int64()),
    ("files", pa.int64()),
    ("file_rows_read", pa.int64()),
    ("file_rows_new", pa.int64()),
    ("file_rows_merged", pa.int64()),
    ("file_rows_quarantined", pa.int64()),
    ("providers", pa.int64()),
    ("flags", pa.int64()),
    ("processed_files", pa.list_(pa.string())),
    # The sources this run published from (fingerprint.py); NULL: unknown, the next run must not skip.
    ("source_fingerprint", pa.string()),
    # The cheap signal read before that fingerprint (fingerprint.py); NULL: the next run hashes the tables.
    ("source_signal", pa.string()),
])
# The provider source rows the last extract read, as extracted, each with the 64-bit hash PostgreSQL
# computed of it (source_snapshot.py): what the next run's incremental extract reuses unchanged rows from.
SOURCE_ROW_HASH = "source_row_hash"
SOURCE_ROW = pa.schema([*PROVIDER_SOURCE, (SOURCE_ROW_HASH, pa.int64())])

# Table names inside omop_<tenant>.
T_PROVIDER, T_CARE_SITE, T_PROVENANCE, T_QUARANTINE, T_FLAG = (
    "provider", "care_site", "provider_provenance", "quarantine", "provider_flag")
T_LANDING_FILE, T_LANDING_ROW = "landing_file", "landing_row"
T_PROVIDER_ID_MAP, T_CARE_SITE_ID_MAP, T_RUN_LOG = "provider_id_map", "care_site_id_map", "run_log"
T_SOURCE_ROW = "source_row"


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and cast to ``schema`` (missing columns become typed NULLs)."""
    columns = [table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
               for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)
