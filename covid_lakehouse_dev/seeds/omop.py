"""A deterministic stand-in for the seed's (non-public) generate_fake_dataset.py.

It creates the source schema the exercise describes (care_site with 8 sites, provider with N rows),
with a configurable share of dirty values, and plants the providers of the sample client file
(E4_sample_providers.csv) so that the file really joins to the database. The second
``provider_source_value`` of the seed's DDL is read as ``provider_id_source_value``.

Dirt, each kind applied independently to ``dirt_rate`` of the generated rows: NPI failing its check
digit; name with a title ("Dr. "), in lower case with stray spaces, or the literal "NULL"; specialty
abbreviated, unknown or missing; care site name abbreviated, unknown or missing. Rows are COPYed,
constraints added afterwards (2,000,000 providers load in seconds).

Demo, tests and benchmarks only: ``seed_source`` replaces the two tables in the given schema.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from covid_lakehouse.defs.omop.rules import npi_check_digits
from covid_lakehouse.defs.omop.tenants import TenantsResource
from covid_lakehouse.lib.postgres import PostgresResource, table_ident, validate_identifier

CARE_SITES = [
    ("City Hospital", "CSH01"),
    ("Village Clinic", "VCL01"),
    ("Metro Medical Center", "MMC01"),
    ("Suburban Health", "SH01"),
    ("North Health Institute", "NHI01"),
    ("Eastside Clinic", "EC01"),
    ("Downtown Health", "DH01"),
    ("Westside Family Practice", "WFP01"),
]
# Abbreviated spellings seen in client files, resolvable to the site (see rules.resolve_sites).
SITE_VARIANTS = {
    "City Hospital": "City Hosp.", "Village Clinic": "Village Clin", "Metro Medical Center": "Metro Med",
    "Suburban Health": "Suburban Hlth", "North Health Institute": "North Health Inst",
    "Eastside Clinic": "eastside clinic", "Downtown Health": "Downtown Hlth",
    "Westside Family Practice": "Westside Family Pract.",
}
UNKNOWN_SITE = "Lakeside Surgical Annex"
FIRST_NAMES = ["John", "Jane", "Emily", "Michael", "Sarah", "Chris", "Laura", "Kevin", "Patricia", "Robert"]
LAST_NAMES = ["Doe", "Smith", "Johnson", "Brown", "Wilson", "Davis", "Taylor", "Garcia", "Martinez", "Lee"]
SPECIALTIES = ["Cardiology", "Pediatrics", "Neurology", "Oncology", "Orthopedics", "Dermatology",
               "General Practice", "Internal Medicine"]
SPECIALTY_VARIANTS = {"Cardiology": "cardiology", "Pediatrics": "Peds", "Neurology": "Neuro", "Oncology": "oncology",
                      "Orthopedics": "Ortho", "Dermatology": "Derma", "General Practice": "general practice",
                      "Internal Medicine": "Int Med"}
UNKNOWN_SPECIALTY = "Sports Medicine"

# The sample file's providers as the system of record holds them (name, npi, specialty, care_site,
# provider_source_value, specialty_source_value, provider_id_source_value). Differences from the
# file are deliberate: Jane Smith has no specialty and Sarah Wilson no site (the file fills the
# gaps), Emily Johnson's specialty and Kevin Garcia's NPI disagree with the file (recorded), Kevin
# joins on his source id. Jane S., the NULL-named row and five others exist only in the file.
PLANTED = [
    ("John Doe", "1234567890", "Cardiology", "City Hospital", "JD001", "Cardiology", "JD-NPI"),
    ("Jane Smith", "2345678901", None, "Village Clinic", "JS002", None, "JS-NPI"),
    ("Johnathan Doe", "3456789012", "Neurology", "Metro Medical Center", "JD003", "Neurology", "JD-NPI-NEW"),
    ("Emily Johnson", "6789012345", "Hematology/Oncology", "North Health Institute", "EJ006", "Hematology/Oncology",
     "EJ-NPI"),
    ("Sarah Wilson", "8901234567", "Dermatology", None, "SW008", "Dermatology", "SW-NPI"),
    ("Kevin Garcia", "1234567802", "Cardiology", "City Hospital", "KG011", "Cardiology", "KG-NPI"),
]
# Every NPI in the sample file: generated providers never reuse one, so file-only providers stay so.
SAMPLE_FILE_NPIS = ["1234567890", "2345678901", "3456789012", "6789012345", "7890123456", "8901234567",
                    "9012345678", "0123456789", "1234567800", "2345678909", "3456789018", "4567890127"]
PROVIDER_COLUMNS = ["provider_name", "npi", "specialty", "care_site", "provider_source_value",
                    "specialty_source_value", "provider_id_source_value"]
SAMPLE_FILE = Path(__file__).parent / "data" / "E4_sample_providers.csv"  # see data/SOURCES.md
_NPI_SPACE = 900_000_000  # 9-digit bases 100000000..999999999
_NPI_STRIDE = 694_847_539  # coprime with _NPI_SPACE: i -> (i * stride + offset) mod space is a permutation


@dataclass(frozen=True)
class SeedReport:
    schema: str
    care_sites: int
    providers: int
    planted: int
    seconds: float


def seed_source(dsn: str, *, providers: int, dirt_rate: float = 0.02, seed: int = 0,
                schema: str = "public") -> SeedReport:
    """(Re)create ``schema``.care_site and ``schema``.provider with ``providers`` rows (the planted
    sample providers included). Deterministic for a given (providers, dirt_rate, seed)."""
    validate_identifier(schema, what="source schema")
    if providers < len(PLANTED):
        raise ValueError(f"providers must be at least {len(PLANTED)} (the planted sample providers), got {providers}")
    if not 0 <= dirt_rate <= 1:
        raise ValueError(f"dirt_rate must be between 0 and 1, got {dirt_rate}")
    started = time.perf_counter()
    rows = provider_rows(providers, dirt_rate, seed)
    with psycopg.connect(dsn) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        care_site, provider = table_ident(schema, "care_site"), table_ident(schema, "provider")
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}, {}").format(provider, care_site))
        conn.execute(sql.SQL(
            "CREATE TABLE {} (care_site_id serial PRIMARY KEY, care_site_name varchar(255) NOT NULL UNIQUE, "
            "care_site_source_value varchar(50))").format(care_site))
        conn.execute(sql.SQL(
            "CREATE TABLE {} (provider_id serial, provider_name varchar(255) NOT NULL, npi varchar(10) NOT NULL, "
            "specialty varchar(100), care_site varchar(255), provider_source_value varchar(50), "
            "specialty_source_value varchar(50), provider_id_source_value varchar(50))").format(provider))
        with conn.cursor().copy(sql.SQL("COPY {} (care_site_name, care_site_source_value) FROM STDIN").format(
                care_site)) as copy:
            for name, code in CARE_SITES:
                copy.write_row((name, code))
        PostgresResource.copy_arrow(conn, provider, rows, columns=PROVIDER_COLUMNS)
        # Indexes built once after the load instead of maintained row by row.
        conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (provider_id), ADD UNIQUE (npi)").format(provider))
    return SeedReport(schema, len(CARE_SITES), rows.num_rows, len(PLANTED), round(time.perf_counter() - started, 2))


class SourceProtectedError(ValueError):
    """Seeding would drop a tenant's source tables, its system of record, without permission."""


def seed_tenant(tenant: str, *, providers: int, dirt_rate: float = 0.02, seed: int = 0,
                tenants: TenantsResource | None = None, drop_existing_source: bool = False) -> SeedReport:
    """Seed a tenant's source, found in the tenants file (its DSN variable and schema). Seeding drops
    and recreates the source tables: only for a tenant marked ``demo: true`` in the tenants file, or with
    ``drop_existing_source`` (`--drop-existing-source`) said explicitly."""
    found = (tenants or TenantsResource()).get(tenant)
    if not (found.demo or drop_existing_source):
        raise SourceProtectedError(
            f"tenant {tenant!r} is not marked `demo: true` in the tenants file: seeding would drop its source "
            f"tables {found.source_schema}.provider and {found.source_schema}.care_site (its system of record). "
            "Pass --drop-existing-source to replace them anyway.")
    return seed_source(found.source_dsn(), providers=providers, dirt_rate=dirt_rate, seed=seed,
                       schema=found.source_schema)


def provider_rows(providers: int, dirt_rate: float, seed: int) -> pa.Table:
    """The provider rows seed_source loads (without provider_id, which the database assigns)."""
    rng = np.random.default_rng(seed)
    n = providers - len(PLANTED)
    npis = _npis(n, rng, dirt_rate)
    first = rng.integers(0, len(FIRST_NAMES), n)
    last = rng.integers(0, len(LAST_NAMES), n)
    names = pc.binary_join_element_wise(pa.array(FIRST_NAMES).take(first), pa.array(LAST_NAMES).take(last), " ")
    initials = pc.binary_join_element_wise(pa.array([f[0] for f in FIRST_NAMES]).take(first),
                                           pa.array([s[0] for s in LAST_NAMES]).take(last), "")
    sequence = pc.utf8_lpad(pc.cast(pa.array(np.arange(1, n + 1)), pa.string()), 7, "0")
    specialty_idx = rng.integers(0, len(SPECIALTIES), n)
    site_idx = rng.integers(0, len(CARE_SITES), n)

    def dirty() -> np.ndarray:
        return rng.random(n) < dirt_rate

    specialty = np.array(SPECIALTIES, dtype=object)[specialty_idx]
    specialty_source = specialty.copy()
    abbreviated = dirty()
    specialty[abbreviated] = np.array([SPECIALTY_VARIANTS[s] for s in SPECIALTIES], dtype=object)[specialty_idx[abbreviated]]
    unknown = dirty()
    specialty[unknown] = specialty_source[unknown] = UNKNOWN_SPECIALTY
    missing = dirty()
    specialty[missing] = specialty_source[missing] = None

    site_names = [name for name, _ in CARE_SITES]
    site = np.array(site_names, dtype=object)[site_idx]
    variant = dirty()
    site[variant] = np.array([SITE_VARIANTS[s] for s in site_names], dtype=object)[site_idx[variant]]
    site[dirty()] = UNKNOWN_SITE
    site[dirty()] = None

    name = np.array(names.to_pylist(), dtype=object)
    titled = dirty()
    name[titled] = "Dr. " + name[titled]
    sloppy = dirty()
    name[sloppy] = np.array([f"  {v.lower()}  " for v in name[sloppy]], dtype=object)
    name[dirty()] = "NULL"

    generated = pa.table({
        "provider_name": pa.array(name, pa.string()),
        "npi": npis,
        "specialty": pa.array(specialty, pa.string()),
        "care_site": pa.array(site, pa.string()),
        "provider_source_value": pc.binary_join_element_wise(initials, sequence, ""),
        "specialty_source_value": pa.array(specialty_source, pa.string()),
        "provider_id_source_value": pc.binary_join_element_wise(initials, pa.scalar("-NPI"), ""),
    })
    planted = pa.table({col: pa.array([row[i] for row in PLANTED], pa.string())
                        for i, col in enumerate(PROVIDER_COLUMNS)})
    return pa.concat_tables([planted, generated])


def _npis(n: int, rng: np.random.Generator, dirt_rate: float) -> pa.Array:
    """n distinct 10-digit NPIs with a valid check digit, except dirt_rate of them; never one whose
    first 9 digits equal a sample file NPI's."""
    offset = int(rng.integers(0, _NPI_SPACE))
    reserved = np.array([int(npi[:9]) for npi in SAMPLE_FILE_NPIS])
    idx = np.arange(n + len(reserved), dtype=np.int64)
    bases = 100_000_000 + (idx * _NPI_STRIDE + offset) % _NPI_SPACE
    bases = bases[~np.isin(bases, reserved)][:n]
    check = npi_check_digits(bases)
    bad = rng.random(n) < dirt_rate
    check = np.where(bad, (check + rng.integers(1, 10, n)) % 10, check)
    return pc.utf8_lpad(pc.cast(pa.array(bases * 10 + check), pa.string()), 10, "0")
