"""Harmonization: source rows and client file rows -> OMOP provider and care_site, with provenance,
quarantine, flags, stable ids and reconciled counts. DuckDB over Arrow, in memory; no I/O here, so the
whole transform is testable on small tables and runs the same at 2,000,000 providers.

The rules (matching order, which value wins, what is quarantined or flagged) are documented case by
case in docs/data-quality.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from covid_lakehouse.defs.omop import tables
from covid_lakehouse.defs.omop.rules import (
    EHR_TYPE_CONCEPT,
    Specialty,
    map_specialties,
    npi_check_digits,
    resolve_sites,
)

MISSING_TOKENS = ("", "null", "none", "n/a", "na", "nan", "nil", "-")

# Row-level cleaning as DuckDB macros. Each is cheap on the common, clean value: the regular
# expressions only run on values a plain test has singled out.
MACROS = [
    # trim() removes spaces (and non-ASCII space separators) at either end; it copies every value,
    # so it only runs on values that may have any (a space at an end, or a non-ASCII character).
    "CREATE MACRO trim_ends(s) AS CASE WHEN starts_with(s, ' ') OR ends_with(s, ' ') OR strlen(s) <> length(s) "
    "THEN trim(s) ELSE s END",
    "CREATE MACRO squash(s) AS CASE WHEN contains(s, '  ') OR contains(s, chr(9)) OR contains(s, chr(10)) "
    "OR contains(s, chr(13)) THEN trim(regexp_replace(s, '\\s+', ' ', 'g')) ELSE trim_ends(s) END",
    # The literal placeholders clients write for "no value" are no value.
    "CREATE MACRO no_placeholder(t) AS CASE WHEN length(t) <= 4 AND lower(t) IN ({missing}) THEN NULL ELSE t END".format(
        missing=", ".join(f"'{t}'" for t in MISSING_TOKENS)),
    "CREATE MACRO clean_text(s) AS no_placeholder(squash(s))",
    # Titles before and credentials after a name are not part of it ("Dr. John Doe", "Jane Roe, MD").
    "CREATE MACRO strip_title(n) AS CASE WHEN lower(left(n, 2)) IN ('dr', 'do', 'pr') "
    "THEN regexp_replace(n, '^(dr|doctor|prof|professor)\\.?\\s+', '', 'i') ELSE n END",
    "CREATE MACRO strip_credential(n) AS CASE WHEN contains(n, ',') "
    "THEN regexp_replace(n, ',\\s*(md|m\\.d\\.|do|d\\.o\\.|phd|ph\\.d\\.)$', '', 'i') ELSE n END",
    # Lower case, every run of other characters one space; a name already of letters, digits and
    # single inner spaces only needs lower().
    "CREATE MACRO name_key(n) AS CASE WHEN regexp_matches(n, '[^A-Za-z0-9 ]|  |^ | $') "
    "THEN trim(regexp_replace(lower(n), '[^a-z0-9]+', ' ', 'g')) ELSE lower(n) END",
    "CREATE MACRO first_token(n) AS string_split(name_key(n), ' ')[1]",
    "CREATE MACRO last_token(n) AS string_split(name_key(n), ' ')[-1]",
    "CREATE MACRO token_compatible(x, y) AS "
    "(x = y OR (length(x) = 1 AND starts_with(y, x)) OR (length(y) = 1 AND starts_with(x, y)))",
    # Same person's name written two ways: "J. Doe" ~ "John Doe", "Jane S." ~ "Jane Smith"; not
    # "Johnathan Doe" ~ "John Doe".
    "CREATE MACRO names_compatible(a, b) AS "
    "(token_compatible(first_token(a), first_token(b)) AND token_compatible(last_token(a), last_token(b)))",
    "CREATE MACRO has_initial(n) AS regexp_matches(name_key(n), '(^| )[a-z]( |$)')",
    # Source ids compare without case, punctuation, or the zero padding of all-digit ids ("001" = "1").
    "CREATE MACRO alnum_upper(x) AS nullif(CASE WHEN regexp_matches(x, '[^A-Z0-9]') "
    "THEN upper(regexp_replace(x, '[^A-Za-z0-9]+', '', 'g')) ELSE x END, '')",
    "CREATE MACRO unpadded(x) AS CASE WHEN x[1] BETWEEN '0' AND '9' AND regexp_full_match(x, '[0-9]+') "
    "THEN coalesce(nullif(ltrim(x, '0'), ''), '0') ELSE x END",
]


def connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    con.execute("SET enable_progress_bar = false")  # it would print into the run's logs
    con.execute("SET TimeZone = 'UTC'")
    for macro in MACROS:
        con.execute(macro)
    return con


def _used(query: str, params: dict | None) -> dict:
    """DuckDB rejects unused named parameters: pass only those the query mentions."""
    return {k: v for k, v in (params or {}).items() if f"${k}" in query}


def _to_arrow(con: duckdb.DuckDBPyConnection, query: str, schema: pa.Schema, params: dict | None = None) -> pa.Table:
    return tables.conform(con.sql(query, params=_used(query, params)).to_arrow_table(), schema)


class _IdLookup:
    """gid -> provider_id of every published provider (table ``ids``), sorted once for binary search:
    attaching ids to millions of rows this way is several times faster than a hash join, and keeps the
    rows' order."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        rows = con.execute("SELECT gid, id FROM ids").fetchnumpy()
        gids, ids = np.asarray(rows["gid"], dtype=np.int64), np.asarray(rows["id"], dtype=np.int64)
        order = np.argsort(gids)
        self.gids, self.ids = gids[order], ids[order]

    def __call__(self, gids: pa.ChunkedArray | pa.Array) -> pa.Array:
        """The id of each gid; NULL for one that has none (a quarantined source row)."""
        if not len(self.gids):
            return pa.nulls(len(gids), pa.int64())
        wanted = np.asarray(pc.fill_null(gids, 0).to_numpy(), dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.gids, wanted), len(self.gids) - 1)
        missing = self.gids[pos] != wanted
        if gids.null_count:
            missing |= np.asarray(pc.is_null(gids).to_numpy(zero_copy_only=False))
        return pa.array(self.ids[pos], pa.int64(), mask=missing)


def _int_column(con: duckdb.DuckDBPyConnection, query: str) -> np.ndarray:
    """The single integer column of ``query`` (which must exclude NULLs) as a numpy array."""
    (values,) = con.execute(query).fetchnumpy().values()
    return np.asarray(values, dtype=np.int64)


def _register_repeated(con: duckdb.DuckDBPyConnection, name: str, query: str) -> int:
    """Register as table ``name`` (column ``value``) the values of ``query``'s integer column that
    occur more than once; returns how many. On millions of mostly distinct values, sorting finds the
    repeats several times faster than a hash aggregation does."""
    values = np.sort(_int_column(con, query))
    repeated = np.unique(values[1:][values[1:] == values[:-1]])
    con.register(name, pa.table({"value": pa.array(repeated, pa.int64())}))
    return len(repeated)


def _lowest_per_key(con: duckdb.DuckDBPyConnection, table: str, key: str, value: str) -> None:
    """Keep one row per ``key`` in ``table``, the one with the lowest ``value``. Keys repeat only
    after overlapping runs, so the (costly) aggregation runs only when one does."""
    if _register_repeated(con, f"{table}_repeated", f"SELECT {key} FROM {table} WHERE {key} IS NOT NULL"):
        con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT {key}, min({value}) AS {value} FROM {table} "
                    f"GROUP BY {key}")


# ---- care sites -----------------------------------------------------------------------------------
@dataclass
class CareSiteBuild:
    care_site: pa.Table
    id_map_additions: pa.Table
    new_ids: int


def build_care_sites(source: pa.Table, id_map: pa.Table, *, now: datetime) -> CareSiteBuild:
    """Natural key: care_site_source_value (the site code), else the normalised name."""
    con = connect()
    con.register("source", source)
    con.register("id_map_rows", id_map)
    # A key appended twice by overlapping runs counts with its lowest id (see _assign_ids).
    con.execute("CREATE VIEW id_map AS SELECT natural_key, min(id) AS id FROM id_map_rows GROUP BY natural_key")
    con.execute("""
        CREATE TABLE cs AS
        SELECT care_site_id AS src_id, clean_text(care_site_name) AS name, clean_text(care_site_source_value) AS code,
               coalesce('code:' || upper(clean_text(care_site_source_value)),
                        'name:' || name_key(clean_text(care_site_name))) AS natural_key
        FROM source""")
    con.execute("""
        CREATE TABLE ids AS
        SELECT cs.natural_key, m.id FROM cs JOIN id_map m USING (natural_key)
        UNION ALL
        SELECT natural_key, (SELECT coalesce(max(id), 0) FROM id_map) + row_number() OVER (ORDER BY min(src_id))
        FROM cs WHERE natural_key NOT IN (SELECT natural_key FROM id_map) GROUP BY natural_key""")
    care_site = _to_arrow(con, """
        SELECT ids.id AS care_site_id, cs.name AS care_site_name, cs.code AS care_site_source_value
        FROM cs LEFT JOIN ids USING (natural_key) ORDER BY care_site_id""", tables.CARE_SITE)
    additions = _to_arrow(con, """
        SELECT natural_key, id, $now AS first_seen_at FROM ids
        WHERE natural_key NOT IN (SELECT natural_key FROM id_map) ORDER BY id""", tables.ID_MAP, {"now": now})
    return CareSiteBuild(care_site, additions, additions.num_rows)


# ---- providers ------------------------------------------------------------------------------------
@dataclass
class Reconciliation:
    source_rows: int = 0
    source_new: int = 0
    source_changed: int = 0
    source_unchanged: int = 0
    source_deleted: int = 0
    source_published: int = 0
    source_quarantined: int = 0
    file_rows: int = 0
    file_rows_new: int = 0
    file_rows_merged: int = 0
    file_rows_quarantined: int = 0
    run_files: int = 0
    run_file_rows_read: int = 0
    run_file_rows_new: int = 0
    run_file_rows_merged: int = 0
    run_file_rows_quarantined: int = 0
    file_only_providers: int = 0
    providers: int = 0

    def equations(self) -> list[tuple[str, int, int]]:
        """(statement, left, right): every one must balance."""
        return [
            ("source rows = new + changed + unchanged", self.source_rows,
             self.source_new + self.source_changed + self.source_unchanged),
            ("source rows = published + quarantined", self.source_rows,
             self.source_published + self.source_quarantined),
            ("file rows (all files) = new + merged + quarantined", self.file_rows,
             self.file_rows_new + self.file_rows_merged + self.file_rows_quarantined),
            ("file rows read this run = new + merged + quarantined", self.run_file_rows_read,
             self.run_file_rows_new + self.run_file_rows_merged + self.run_file_rows_quarantined),
            ("providers = published source rows + file-only providers", self.providers,
             self.source_published + self.file_only_providers),
        ]

    @property
    def balanced(self) -> bool:
        return all(left == right for _, left, right in self.equations())


@dataclass
class ProviderBuild:
    provider: pa.Table
    provenance: pa.Table
    quarantine: pa.Table
    flags: pa.Table
    id_map_additions: pa.Table
    counts: Reconciliation
    run_files: list[str] = field(default_factory=list)  # "key#etag" of files first harmonized now

    def flag_counts(self) -> dict[str, int]:
        return _value_counts(self.flags, "flag")

    def quarantine_counts(self) -> dict[str, int]:
        return _value_counts(self.quarantine, "reason")


def _value_counts(table: pa.Table, column: str) -> dict[str, int]:
    if not table.num_rows:
        return {}
    counts = table[column].value_counts().to_pylist()
    return {c["values"]: c["counts"] for c in sorted(counts, key=lambda c: (-c["counts"], str(c["values"])))}


def build_providers(
    *,
    source: pa.Table,
    source_object: str,
    care_sites: pa.Table,
    landing_rows: pa.Table,
    landing_files: pa.Table,
    id_map: pa.Table,
    previous_provenance: pa.Table,
    processed_files: Iterable[str],
    specialties: Mapping[str, Specialty],
    now: datetime,
) -> ProviderBuild:
    con = connect()
    for name, table in [("source", source), ("landing_rows", landing_rows), ("landing_files", landing_files),
                        ("id_map", id_map), ("prev", previous_provenance)]:
        con.register(name, table)
    con.register("processed", pa.table({"file_ref": pa.array(sorted(set(processed_files)), pa.string())}))
    params = {"now": now, "source_object": source_object}
    _value_maps(con, care_sites, specialties)
    _clean_source(con)
    _clean_files(con)
    _resolve_identities(con)
    _choose_values(con)
    _assign_ids(con)
    provider = con.sql(f"""
        SELECT c.gid, c.name AS provider_name, c.npi, c.specialty_concept_id, c.care_site_id,
               c.provider_source_value, c.specialty_source_value,
               CASE WHEN c.specialty_source_value IS NOT NULL THEN 0 END AS specialty_source_concept_id,
               CASE WHEN c.in_source THEN {EHR_TYPE_CONCEPT} ELSE 0 END AS provider_type_concept_id
        FROM chosen c""").to_arrow_table()
    ids_of = _IdLookup(con)
    provider = tables.conform(provider.append_column("provider_id", ids_of(provider["gid"])), tables.PROVIDER)
    con.register("published", provider)
    return ProviderBuild(
        provider=provider,
        provenance=_provenance(con, ids_of, params),
        quarantine=_quarantine(con, params),
        flags=_flags(con, params),
        id_map_additions=_new_keys(con, ids_of, params),
        counts=_reconcile(con, source, provider),
        run_files=[r[0] for r in con.execute("SELECT file_ref FROM files WHERE run ORDER BY 1").fetchall()],
    )


def _value_maps(con: duckdb.DuckDBPyConnection, care_sites: pa.Table, specialties: Mapping[str, Specialty]) -> None:
    """Specialty labels and site names have few distinct values whatever the row count: each distinct
    raw value is cleaned and mapped once (rules.py) into a dictionary the rows join on."""
    con.execute("""
        CREATE TABLE specialty_raw AS
        SELECT raw, clean_text(raw) AS clean FROM (
            SELECT specialty AS raw FROM source UNION SELECT specialty_source_value FROM source
            UNION SELECT specialty FROM landing_rows UNION SELECT spec_source FROM landing_rows)
        WHERE raw IS NOT NULL""")
    raw, clean = _columns(con, "SELECT raw, clean FROM specialty_raw")
    concepts = map_specialties([c for c in clean if c], specialties)
    con.register("specialty_dict", pa.table({
        "raw": pa.array(raw, pa.string()), "clean": pa.array(clean, pa.string()),
        "concept_id": pa.array([concepts[c] if c else None for c in clean], pa.int32())}))
    con.execute("""
        CREATE TABLE site_raw AS
        SELECT raw, clean_text(raw) AS clean
        FROM (SELECT care_site AS raw FROM source UNION SELECT site_name FROM landing_rows)
        WHERE raw IS NOT NULL""")
    raw, clean = _columns(con, "SELECT raw, clean FROM site_raw")
    sites = dict(zip(care_sites["care_site_id"].to_pylist(), care_sites["care_site_name"].to_pylist(), strict=True))
    resolved = resolve_sites([c for c in clean if c], sites)
    con.register("site_dict", pa.table({
        "raw": pa.array(raw, pa.string()), "clean": pa.array(clean, pa.string()),
        "care_site_id": pa.array([resolved[c] if c else None for c in clean], pa.int64())}))


def _columns(con: duckdb.DuckDBPyConnection, query: str) -> list[list]:
    rows = con.execute(query).fetchall()
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[], []]


# Row cleaning in layers: a macro repeats its argument wherever it uses it, so each layer applies
# macros to plain columns of the layer below (nesting them would multiply the work). Specialty and
# site values come from the dictionaries.
_CLEAN = """
    WITH l1 AS (SELECT *, squash({name}) AS l1_name, trim_ends({npi}) AS l1_npi, trim_ends({psv}) AS l1_psv,
                       trim_ends({id_source}) AS l1_id_source, trim_ends({client_id}) AS l1_client_id FROM {table}),
    l2 AS (SELECT *, no_placeholder(l1_name) AS l2_name, no_placeholder(l1_npi) AS c_npi,
                  no_placeholder(l1_psv) AS c_psv, no_placeholder(l1_id_source) AS c_id_source,
                  no_placeholder(l1_client_id) AS c_client_id FROM l1),
    l3 AS (SELECT *, strip_title(l2_name) AS l3_name, replace(replace(c_npi, ' ', ''), '-', '') AS l3_npi,
                  alnum_upper(c_psv) AS l3_psv, alnum_upper(c_client_id) AS l3_client_id FROM l2),
    l4 AS (SELECT *, strip_credential(l3_name) AS l4_name, unpadded(l3_client_id) AS v_pid,
                  -- an NPI is ten digits once spaces and dashes are removed, else it is no NPI
                  CASE WHEN regexp_full_match(l3_npi, '[0-9]{{10}}') THEN l3_npi END AS v_npi,
                  unpadded(l3_psv) AS v_sid FROM l3)
    SELECT l4.*, no_placeholder(trim_ends(l4_name)) AS c_name,  -- "Dr. NULL" is no name either
           v_npi::BIGINT AS v_npi_num,  -- ten digits, so one number per NPI: faster joins than text
           m1.clean AS c_specialty, m2.clean AS c_spec_source, coalesce(m2.clean, m1.clean) AS v_spec_value,
           coalesce(nullif(m1.concept_id, 0), nullif(m2.concept_id, 0), CASE WHEN m1.clean IS NOT NULL
                    OR m2.clean IS NOT NULL THEN 0 END) AS v_concept,
           s.clean AS c_site, s.care_site_id AS v_site_id
    FROM l4 LEFT JOIN specialty_dict m1 ON m1.raw = l4.{specialty}
         LEFT JOIN specialty_dict m2 ON m2.raw = l4.{spec_source} LEFT JOIN site_dict s ON s.raw = l4.{site}"""
_CLEANED = ("c_name AS name, c_npi AS npi_raw, v_npi AS npi, v_npi_num AS npi_num, c_specialty AS specialty, "
            "c_spec_source AS spec_source, "
            "c_site AS site, c_psv AS psv, v_sid AS sid, c_id_source AS id_source, v_concept AS concept, "
            "v_spec_value AS spec_value, v_site_id AS site_id")


def _clean_source(con: duckdb.DuckDBPyConnection) -> None:
    raw = ["provider_name", "npi", "specialty", "care_site", "provider_source_value", "specialty_source_value",
           "provider_id_source_value"]
    cleaning = _CLEAN.format(table="source", name="provider_name", npi="npi", psv="provider_source_value",
                             id_source="provider_id_source_value", client_id="NULL::VARCHAR", specialty="specialty",
                             spec_source="specialty_source_value", site="care_site")
    con.execute(f"""
        CREATE TABLE pg AS
        SELECT provider_id AS src_id, {_CLEANED},
               -- DuckDB's 64-bit hash of the raw row (63 bits kept: Iceberg has no unsigned integers)
               (hash(provider_id, {", ".join(raw)}) & 9223372036854775807)::BIGINT AS row_hash
        FROM ({cleaning})""")
    # NPIs that identify one source row (the source's UNIQUE is on the raw value; cleaning can make
    # two raw values one NPI).
    _register_repeated(con, "pg_npi_repeated", "SELECT npi_num FROM pg WHERE npi_num IS NOT NULL")
    con.execute("CREATE VIEW pg_npi AS SELECT npi_num, src_id FROM pg WHERE npi_num IS NOT NULL "
                "AND npi_num NOT IN (SELECT value FROM pg_npi_repeated)")
    # What this source row was last run: its hash, provider_id and status.
    con.execute("CREATE TABLE prev_pg AS SELECT TRY_CAST(source_key AS BIGINT) AS src_id, * FROM prev "
                "WHERE source_system = 'postgres'")


def _clean_files(con: duckdb.DuckDBPyConnection) -> None:
    # Every file of the manifest (once, should two runs have taken it in), and whether this run is the
    # first to harmonize it.
    con.execute("""
        CREATE TABLE files AS
        SELECT object_key, etag, object_key || '#' || etag AS file_ref, status, reason, detail, ingested_at,
               object_key || '#' || etag NOT IN (SELECT file_ref FROM processed) AS run
        FROM (SELECT DISTINCT ON (object_key, etag) * FROM landing_files ORDER BY object_key, etag, ingested_at)""")
    # A retried ingestion may have appended a file's rows twice: one row per (file, line).
    con.execute("""
        CREATE VIEW landing_unique AS
        SELECT DISTINCT ON (object_key, etag, line_no) * FROM landing_rows
        ORDER BY object_key, etag, line_no, ingested_at""")
    cleaning = _CLEAN.format(table="landing_unique", name="provider_name", npi="npi", psv="source_id",
                             id_source="id_source", client_id="provider_id", specialty="specialty",
                             spec_source="spec_source", site="site_name")
    con.execute(f"""
        CREATE TABLE f AS
        SELECT row_number() OVER (ORDER BY object_last_modified, object_key, etag, line_no) AS fid,
               object_key, etag, object_key || '#' || etag AS file_ref, line_no, object_last_modified, ingested_at,
               {_CLEANED}, c_client_id AS client_id, v_pid AS pid, malformed_reason,
               coalesce(raw_record, to_json(struct_pack(ProviderName := provider_name, ProviderID := provider_id,
                   NPI := npi, Specialty := specialty, SiteName := site_name, SourceID := source_id,
                   SpecSource := spec_source, IDSource := id_source))::VARCHAR) AS record
        FROM ({cleaning})""")
    # Rows nothing can be made of: unreadable, or without any identifier.
    con.execute("""
        CREATE TABLE fq AS
        SELECT fid, malformed_reason AS reason, NULL AS detail FROM f WHERE malformed_reason IS NOT NULL
        UNION ALL
        SELECT fid, 'no_identifier', CASE WHEN npi_raw IS NOT NULL THEN 'NPI ' || npi_raw || ' is not 10 digits' END
        FROM f WHERE malformed_reason IS NULL AND npi IS NULL AND sid IS NULL AND pid IS NULL""")


def _resolve_identities(con: duckdb.DuckDBPyConnection) -> None:
    """Which provider each usable file row describes. Precedence: the source row with the same NPI;
    the source row with the same source id (SourceID = provider_source_value); the identity of file
    rows sharing its NPI; for rows without an NPI, the identity of rows sharing its source id, then
    its client ProviderID. Two different NPIs are never the same provider. A row whose source id or
    ProviderID points at two providers is ambiguous (quarantined, not guessed).

    The group id (gid) of a provider is its source row's provider_id, or a negative number for a
    provider known only from files."""
    # Source ids that identify one source row, among those the files use.
    con.execute("""
        CREATE TABLE pg_sid AS
        SELECT sid, min(src_id) AS src_id FROM pg WHERE sid IN (SELECT sid FROM f WHERE sid IS NOT NULL)
        GROUP BY sid HAVING count(*) = 1""")
    con.execute("""
        CREATE TABLE fu AS
        SELECT f.*, pn.src_id AS by_npi, ps.src_id AS by_sid
        FROM f LEFT JOIN pg_npi pn USING (npi_num) LEFT JOIN pg_sid ps USING (sid)
        WHERE f.fid NOT IN (SELECT fid FROM fq)""")
    con.execute("""
        CREATE TABLE npi_ident AS
        SELECT npi, CASE WHEN max(by_npi) IS NOT NULL THEN 'pg:' || max(by_npi)
                         WHEN count(DISTINCT by_sid) = 1 THEN 'pg:' || max(by_sid)
                         ELSE 'npi:' || npi END AS ident
        FROM fu WHERE npi IS NOT NULL GROUP BY npi""")
    for key in ("sid", "pid"):
        con.execute(f"""
            CREATE TABLE {key}_ident AS
            SELECT {key}, min(ident) AS ident, count(DISTINCT ident) AS n
            FROM fu JOIN npi_ident USING (npi) WHERE {key} IS NOT NULL GROUP BY {key}""")
    con.execute("""
        CREATE TABLE pid_sid AS
        SELECT pid, 'sid:' || min(sid) AS ident, count(DISTINCT sid) AS n
        FROM fu WHERE npi IS NULL AND sid IS NOT NULL AND pid IS NOT NULL GROUP BY pid""")
    con.execute("""
        CREATE TABLE fi AS
        SELECT fu.*, CASE
                WHEN fu.npi IS NOT NULL THEN ni.ident
                WHEN fu.by_sid IS NOT NULL THEN 'pg:' || fu.by_sid
                WHEN si.n > 1 THEN NULL
                WHEN si.n = 1 THEN si.ident
                WHEN fu.sid IS NOT NULL THEN 'sid:' || fu.sid
                WHEN pi.n > 1 OR ps.n > 1 THEN NULL
                WHEN pi.n = 1 THEN pi.ident
                WHEN ps.n = 1 THEN ps.ident
                ELSE 'pid:' || fu.pid END AS ident
        FROM fu LEFT JOIN npi_ident ni ON ni.npi = fu.npi LEFT JOIN sid_ident si ON si.sid = fu.sid
             LEFT JOIN pid_ident pi ON pi.pid = fu.pid LEFT JOIN pid_sid ps ON ps.pid = fu.pid""")
    con.execute("INSERT INTO fq SELECT fid, 'ambiguous_match', 'its source id or ProviderID matches several providers' "
                "FROM fi WHERE ident IS NULL")
    # File rows as candidates of their provider, the most recent file first.
    con.execute("""
        CREATE TABLE fc AS
        SELECT CASE WHEN ident LIKE 'pg:%' THEN substr(ident, 4)::BIGINT ELSE -dense_rank() OVER (ORDER BY ident) END
                   AS gid,
               row_number() OVER (ORDER BY object_last_modified DESC, object_key DESC, etag, line_no) AS prio, *
        FROM fi WHERE ident IS NOT NULL""")


_CANDIDATE_COLUMNS = ("name, npi, npi_num, npi_raw, specialty, spec_source, site, psv, sid, id_source, concept, "
                      "spec_value, site_id")


def _choose_values(con: duckdb.DuckDBPyConnection) -> None:
    """Per provider, each column takes the first usable value: the source row (system of record),
    then file rows, the most recent first. A mapped specialty or site beats an unmappable one; among
    file names a full name beats one with initials. Only providers with file rows need choosing."""
    con.execute(f"""
        CREATE TABLE mc AS
        SELECT src_id AS gid, 0::BIGINT AS prio, 'postgres' AS source_system, src_id, NULL::BIGINT AS fid,
               src_id::VARCHAR AS source_key, NULL AS pid, NULL AS client_id, {_CANDIDATE_COLUMNS}
        FROM pg WHERE src_id IN (SELECT gid FROM fc)
        UNION ALL
        SELECT gid, prio, 'client_file', NULL, fid, line_no::VARCHAR, pid, client_id, {_CANDIDATE_COLUMNS}
        FROM fc""")
    con.execute("""
        CREATE TABLE chosen_groups AS
        SELECT gid,
               arg_min(name, (prio > 0, has_initial(name), prio)) FILTER (WHERE name IS NOT NULL),
               arg_min(npi, prio) FILTER (WHERE npi IS NOT NULL), arg_min(npi_num, prio) FILTER (WHERE npi IS NOT NULL),
               coalesce(arg_min(concept, (concept = 0, prio)) FILTER (WHERE concept IS NOT NULL), 0),
               arg_min(spec_value, (concept = 0, prio)) FILTER (WHERE concept IS NOT NULL),
               arg_min(site_id, prio) FILTER (WHERE site_id IS NOT NULL),
               arg_min(psv, prio) FILTER (WHERE psv IS NOT NULL),
               bool_or(source_system = 'postgres') AS in_source, min(fid) AS founding_fid
        FROM mc GROUP BY gid""")
    # The source rows without file rows are their own choice: a view, not a copy of millions of rows.
    con.execute("""
        CREATE VIEW chosen_all AS
        SELECT src_id AS gid, name, npi, npi_num, coalesce(concept, 0) AS specialty_concept_id,
               spec_value AS specialty_source_value, site_id AS care_site_id, psv AS provider_source_value,
               true AS in_source, NULL::BIGINT AS founding_fid
        FROM pg WHERE src_id NOT IN (SELECT gid FROM chosen_groups)
        UNION ALL
        SELECT * FROM chosen_groups""")
    # OMOP requires a provider_name: without one from any source the provider cannot be published.
    con.execute("CREATE VIEW chosen AS SELECT * FROM chosen_all WHERE name IS NOT NULL")
    con.execute("CREATE TABLE nameless AS SELECT gid, in_source FROM chosen_all WHERE name IS NULL")


def _assign_ids(con: duckdb.DuckDBPyConnection) -> None:
    """Stable provider_ids from the append-only id map (natural key -> id). A provider's claims,
    strongest first: its source row's NPI (npi:<npi>; pg:<provider_id> for a row without a usable
    NPI); the provider_id its source row had in the previous run (so an NPI corrected in the source
    keeps its provider); the NPIs, source ids and client ProviderIDs of its file rows. If two
    providers claim one id, the stronger claim keeps it and the other gets a new id. New keys are
    appended to the map.

    The run queue keeps one tenant's runs apart, but should two overlap they may both append a key:
    the lowest id recorded for a key is the one that counts, so the map never yields two ids."""
    con.execute("CREATE TABLE idm_npi AS SELECT TRY_CAST(substr(natural_key, 5) AS BIGINT) AS npi_num, id FROM id_map "
                "WHERE starts_with(natural_key, 'npi:')")
    con.execute("CREATE TABLE idm_row AS SELECT substr(natural_key, 4)::BIGINT AS src_id, id FROM id_map "
                "WHERE starts_with(natural_key, 'pg:')")
    con.execute("CREATE TABLE prev_ids AS SELECT src_id, provider_id FROM prev_pg WHERE provider_id IS NOT NULL")
    # One row per key, so that the claims below are one row per source row without a GROUP BY.
    _lowest_per_key(con, "idm_npi", "npi_num", "id")
    _lowest_per_key(con, "idm_row", "src_id", "id")
    _lowest_per_key(con, "prev_ids", "src_id", "provider_id")
    con.execute("""
        CREATE TABLE pclaims AS
        WITH p AS (SELECT src_id, npi, CASE WHEN npi_num NOT IN (SELECT value FROM pg_npi_repeated) THEN npi_num END
                              AS unique_npi
                   FROM pg WHERE src_id NOT IN (SELECT gid FROM nameless))
        SELECT p.src_id AS gid, CASE WHEN p.unique_npi IS NOT NULL THEN p.npi END AS key_npi,
               coalesce(i.id, r.id) AS key_id, pp.provider_id AS previous_id
        FROM p LEFT JOIN idm_npi i ON i.npi_num = p.unique_npi
             LEFT JOIN idm_row r ON r.src_id = p.src_id AND p.unique_npi IS NULL
             LEFT JOIN prev_ids pp ON pp.src_id = p.src_id""")
    # File keys (few), except the NPI key a source row already gives its provider.
    con.execute("""
        CREATE TABLE fkeys AS
        SELECT k.gid, k.key, k.strength, min(m.id) AS mapped_id FROM (
            SELECT DISTINCT fc.gid, k.key, k.strength
            FROM fc CROSS JOIN LATERAL (VALUES ('npi:' || fc.npi, 2), ('sid:' || fc.sid, 3), ('pid:' || fc.pid, 4))
                 AS k(key, strength)
                 LEFT JOIN pg_npi p ON p.src_id = fc.gid
            WHERE k.key IS NOT NULL AND NOT (k.strength = 2 AND fc.npi_num IS NOT DISTINCT FROM p.npi_num)
              AND fc.gid NOT IN (SELECT gid FROM nameless)) k
        LEFT JOIN id_map m ON m.natural_key = k.key
        GROUP BY k.gid, k.key, k.strength""")
    # Every published provider once, with its strongest claim (NULL: none). pclaims holds exactly the
    # published providers with a source row (gid = its provider_id); the others are file-only (gid < 0).
    con.execute("""
        CREATE TABLE claims AS
        WITH fclaims AS (SELECT gid, arg_min(mapped_id, (strength, key)) AS id, min(strength) AS strength
                         FROM fkeys WHERE mapped_id IS NOT NULL GROUP BY gid)
        SELECT gid, coalesce(p.key_id, p.previous_id, f.id) AS id,
               CASE WHEN p.key_id IS NOT NULL THEN 0 WHEN p.previous_id IS NOT NULL THEN 1 ELSE f.strength END
                   AS strength, NULL::BIGINT AS founding_fid,
               -- the key this provider's source row adds to the map
               CASE WHEN p.key_id IS NULL THEN coalesce('npi:' || p.key_npi, 'pg:' || gid) END AS new_key
        FROM pclaims p LEFT JOIN fclaims f USING (gid)
        UNION ALL
        SELECT c.gid, f.id, f.strength, c.founding_fid, NULL FROM chosen c LEFT JOIN fclaims f USING (gid)
        WHERE c.gid < 0""")
    _register_repeated(con, "contested", "SELECT id FROM claims WHERE id IS NOT NULL")
    con.execute("""
        CREATE TABLE ids AS
        WITH losers AS (SELECT gid FROM claims WHERE id IN (SELECT value FROM contested)
                        QUALIFY row_number() OVER (PARTITION BY id ORDER BY strength, gid) > 1),
             kept AS (SELECT gid, CASE WHEN gid NOT IN (SELECT gid FROM losers) THEN id END AS id,
                             founding_fid FROM claims)
        SELECT gid, id FROM kept WHERE id IS NOT NULL
        UNION ALL
        -- new ids in source order (a source row's gid is its provider_id), then file arrival order
        SELECT gid, (SELECT coalesce(max(id), 0) FROM id_map)
                    + row_number() OVER (ORDER BY gid < 0, founding_fid, gid)
        FROM kept WHERE id IS NULL""")
    # A file key shared by two providers this run identifies neither: it is not recorded.
    con.execute("""
        CREATE TABLE new_file_keys AS
        SELECT key AS natural_key, id FROM fkeys JOIN ids USING (gid)
        WHERE mapped_id IS NULL AND key NOT IN (SELECT key FROM fkeys GROUP BY key HAVING count(DISTINCT gid) > 1)""")


def _new_keys(con: duckdb.DuckDBPyConnection, ids_of: _IdLookup, params: dict) -> pa.Table:
    """The id map's additions: the new key of each source row (claims.new_key) and of file rows."""
    source = con.sql("SELECT new_key, gid FROM claims WHERE new_key IS NOT NULL").to_arrow_table()
    files = con.sql("SELECT natural_key, id FROM new_file_keys").to_arrow_table()
    keys = pa.table({
        "natural_key": pa.chunked_array([*source["new_key"].chunks, *files["natural_key"].chunks], pa.string()),
        "id": pa.chunked_array([ids_of(source["gid"]), *files["id"].cast(pa.int64()).chunks], pa.int64()),
    }).sort_by([("id", "ascending"), ("natural_key", "ascending")])
    return tables.conform(keys.append_column("first_seen_at", pa.repeat(pa.scalar(params["now"], tables.TS),
                                                                          keys.num_rows)), tables.ID_MAP)


def _provenance(con: duckdb.DuckDBPyConnection, ids_of: _IdLookup, params: dict) -> pa.Table:
    # One row per source row: its provider (none when quarantined), first seen and last changed.
    rows = con.sql("""
        SELECT pg.src_id AS gid, 'postgres' AS source_system, pg.src_id::VARCHAR AS source_key, pg.id_source,
               $source_object AS source_object, pg.row_hash,
               coalesce(p.first_seen_at, $now) AS first_seen_at, $now AS last_seen_at,
               CASE WHEN p.row_hash IS NOT DISTINCT FROM pg.row_hash THEN p.last_changed_at ELSE $now END
                   AS last_changed_at
        FROM pg LEFT JOIN prev_pg p ON p.src_id = pg.src_id""", params=params).to_arrow_table()
    provider_id = ids_of(rows["gid"])
    rows = rows.append_column("provider_id", provider_id).append_column(
        "status", pc.if_else(pc.is_null(provider_id), "quarantined", "published"))
    # Source rows gone since the last run, and the client ids of each provider per file.
    others = _to_arrow(con, """
        SELECT provider_id, source_system, source_key, id_source, source_object, 'deleted' AS status, row_hash,
               first_seen_at, last_seen_at, last_changed_at
        FROM prev_pg WHERE src_id NOT IN (SELECT src_id FROM pg)
        UNION ALL
        SELECT ids.id, 'client_file', fc.client_id, fc.id_source, fc.object_key, 'published', NULL,
               min(fc.object_last_modified), max(fc.object_last_modified), max(fc.object_last_modified)
        FROM fc JOIN ids USING (gid)
        GROUP BY ids.id, fc.client_id, fc.id_source, fc.object_key""", tables.PROVENANCE, params)
    return pa.concat_tables([tables.conform(rows, tables.PROVENANCE), others])


def _quarantine(con: duckdb.DuckDBPyConnection, params: dict) -> pa.Table:
    return _to_arrow(con, """
        SELECT 'client_file' AS source_system, object_key AS source_object, NULL AS source_key, reason, detail,
               NULL AS record, ingested_at AS detected_at
        FROM files WHERE status = 'rejected'
        UNION ALL
        SELECT 'client_file', f.object_key, f.line_no::VARCHAR, q.reason, q.detail, f.record, f.ingested_at
        FROM fq q JOIN f USING (fid)
        UNION ALL
        SELECT 'client_file', fc.object_key, fc.line_no::VARCHAR, 'missing_provider_name',
               'no source gives this provider a name', fc.record, fc.ingested_at
        FROM fc WHERE gid IN (SELECT gid FROM nameless)
        UNION ALL
        SELECT 'postgres', $source_object, s.provider_id::VARCHAR, 'missing_provider_name',
               'no source gives this provider a name', to_json(s)::VARCHAR, $now
        FROM source s WHERE s.provider_id IN (SELECT gid FROM nameless)
        ORDER BY 1, 2, try_cast(source_key AS BIGINT)""", tables.QUARANTINE, params)


# Per column: (the disagreeing source value, the published value, when they disagree).
CONFLICTS = {
    "provider_name": ("c.name", "ch.name", "c.name IS NOT NULL AND NOT names_compatible(c.name, ch.name)"),
    "npi": ("c.npi", "ch.npi", "c.npi IS NOT NULL AND c.npi <> ch.npi"),
    "specialty_concept_id": ("c.concept || ' (' || c.spec_value || ')'",
                             "ch.specialty_concept_id || ' (' || ch.specialty_source_value || ')'",
                             "c.concept > 0 AND ch.specialty_concept_id > 0 AND c.concept <> ch.specialty_concept_id"),
    "care_site_id": ("c.site_id || ' (' || c.site || ')'", "ch.care_site_id::VARCHAR",
                     "c.site_id IS NOT NULL AND c.site_id <> ch.care_site_id"),
    "provider_source_value": ("c.psv", "ch.provider_source_value",
                              "c.sid IS NOT NULL AND c.sid <> unpadded(alnum_upper(ch.provider_source_value))"),
}


def _flags(con: duckdb.DuckDBPyConnection, params: dict) -> pa.Table:
    """Findings kept with the published data: NPI check digit failures, malformed NPIs, unmapped
    specialties and sites, disagreements between sources (both values), possible duplicates."""
    conflicts = "\n            UNION ALL ".join(
        f"SELECT c.gid, 'value_conflict', '{column}', {chosen}, {other}, c.source_system, c.fid, c.source_key,"
        f" 'sources disagree; the published value is kept' FROM mc c JOIN chosen ch USING (gid) WHERE {condition}"
        for column, (other, chosen, condition) in CONFLICTS.items())
    # The NPI check digit (Luhn over "80840" + the first nine digits), in numpy: a dozen integer
    # operations per NPI, on millions of NPIs.
    rows = con.execute("SELECT gid, npi_num FROM chosen WHERE npi_num IS NOT NULL").fetchnumpy()
    gid, npi = (np.asarray(rows[c], dtype=np.int64) for c in ("gid", "npi_num"))
    con.register("npi_check_failed", pa.table({"gid": gid[npi_check_digits(npi // 10) != npi % 10]}))
    # The rows with something to flag, found in one pass over the source rows (a few percent of them).
    con.execute("""
        CREATE TABLE issues AS
        SELECT src_id AS gid, 'postgres' AS source_system, NULL::BIGINT AS fid, src_id::VARCHAR AS source_key,
               npi, npi_raw, concept, specialty, spec_source, site, site_id
        FROM pg WHERE ((npi_raw IS NOT NULL AND npi IS NULL) OR concept = 0 OR (site IS NOT NULL AND site_id IS NULL))
                      AND src_id NOT IN (SELECT gid FROM nameless)
        UNION ALL
        SELECT gid, 'client_file', fid, line_no::VARCHAR, npi, npi_raw, concept, specialty, spec_source, site, site_id
        FROM fc WHERE gid NOT IN (SELECT gid FROM nameless)""")
    return _to_arrow(con, f"""
        WITH rows AS (SELECT * FROM issues),
        found (gid, flag, column_name, value, other_value, source_system, fid, source_key, detail) AS (
            SELECT gid, 'npi_check_digit', 'npi', npi, NULL, NULL, NULL, NULL, 'fails the NPI Luhn check digit'
            FROM chosen WHERE gid IN (SELECT gid FROM npi_check_failed)
            UNION ALL
            SELECT gid, 'npi_malformed', 'npi', NULL, npi_raw, source_system, fid, source_key, 'not 10 digits; ignored'
            FROM rows WHERE npi_raw IS NOT NULL AND npi IS NULL
            UNION ALL
            SELECT gid, 'specialty_unmapped', 'specialty_concept_id', '0', coalesce(specialty, spec_source),
                   source_system, fid, source_key, 'no Medicare Specialty concept for this label'
            FROM rows WHERE concept = 0
            UNION ALL
            SELECT gid, 'care_site_unmapped', 'care_site_id', NULL, site, source_system, fid, source_key,
                   'no care site of this name'
            FROM rows WHERE site IS NOT NULL AND site_id IS NULL
            UNION ALL {conflicts}),
        candidates AS (SELECT provider_id AS id, provider_name AS name, name_key(provider_name) AS k
                       FROM published WHERE npi IS NULL),
        -- names sharing a candidate's first letter, with their first and last tokens computed once
        others AS (SELECT id, name, k, string_split(k, ' ')[1] AS ft, string_split(k, ' ')[-1] AS lt FROM (
                       SELECT provider_id AS id, provider_name AS name, name_key(provider_name) AS k
                       FROM published WHERE lower(provider_name[1]) IN (SELECT k[1] FROM candidates)))
        SELECT ids.id AS provider_id, x.flag, x.column_name, x.value, x.other_value, NULL AS related_provider_id,
               x.source_system,
               CASE WHEN x.source_system = 'postgres' THEN $source_object ELSE f.object_key END AS source_object,
               x.source_key, x.detail
        FROM found x JOIN ids USING (gid) LEFT JOIN f ON f.fid = x.fid
        UNION ALL
        -- A provider without an NPI whose name is compatible with another provider's may be that
        -- provider: flagged for review, never merged (two valid NPIs are two people, so only
        -- NPI-less providers are candidates).
        SELECT c.id, 'possible_duplicate', 'provider_name', c.name, arg_min(o.name, o.id), min(o.id), NULL, NULL, NULL,
               count(*) || ' provider(s) with a compatible name'
        FROM (SELECT *, string_split(k, ' ')[1] AS ft, string_split(k, ' ')[-1] AS lt FROM candidates) c
             JOIN others o ON o.id <> c.id AND o.ft[1] = c.ft[1] AND o.lt[1] = c.lt[1]
                  AND token_compatible(c.ft, o.ft) AND token_compatible(c.lt, o.lt)
        GROUP BY c.id, c.name""", tables.FLAG, params)


def _reconcile(con: duckdb.DuckDBPyConnection, source: pa.Table, provider: pa.Table) -> Reconciliation:
    """Each count is taken from a different table than the one it is compared with, so a row lost or
    duplicated by a join shows up as an unbalanced equation."""
    run_rows = "(SELECT fid FROM f WHERE file_ref IN (SELECT file_ref FROM files WHERE run))"
    quarantined = "(SELECT fid FROM fq UNION SELECT fid FROM fc WHERE gid IN (SELECT gid FROM nameless))"
    attached = "(SELECT fid FROM fc WHERE gid NOT IN (SELECT gid FROM nameless))"
    founding = "(SELECT founding_fid FROM chosen WHERE NOT in_source)"
    counts = con.execute(f"""
        WITH diff AS (SELECT CASE WHEN p.src_id IS NULL THEN 'new'
                                  WHEN p.row_hash = pg.row_hash AND p.status <> 'deleted' THEN 'unchanged'
                                  ELSE 'changed' END AS kind
                      FROM pg LEFT JOIN prev_pg p USING (src_id))
        SELECT
            (SELECT count(*) FROM diff WHERE kind = 'new'),
            (SELECT count(*) FROM diff WHERE kind = 'changed'),
            (SELECT count(*) FROM diff WHERE kind = 'unchanged'),
            (SELECT count(*) FROM prev_pg WHERE status <> 'deleted' AND src_id NOT IN (SELECT src_id FROM pg)),
            (SELECT count(*) FROM chosen WHERE in_source),
            (SELECT count(*) FROM nameless WHERE in_source),
            (SELECT count(*) FROM f),
            (SELECT count(*) FROM chosen WHERE NOT in_source),
            (SELECT count(*) FROM {attached}),
            (SELECT count(*) FROM {quarantined}),
            (SELECT count(*) FROM files WHERE run),
            (SELECT count(*) FROM {run_rows}),
            (SELECT count(*) FROM {founding} WHERE founding_fid IN {run_rows}),
            (SELECT count(*) FROM {attached} WHERE fid IN {run_rows}),
            (SELECT count(*) FROM {quarantined} WHERE fid IN {run_rows})
    """).fetchone()
    (new, changed, unchanged, deleted, published, src_quarantined, file_rows, file_only, attached_rows,
     file_quarantined, run_files, run_read, run_new, run_attached, run_quarantined) = counts
    return Reconciliation(
        source_rows=source.num_rows, source_new=new, source_changed=changed, source_unchanged=unchanged,
        source_deleted=deleted, source_published=published, source_quarantined=src_quarantined,
        file_rows=file_rows, file_rows_new=file_only, file_rows_merged=attached_rows - file_only,
        file_rows_quarantined=file_quarantined, run_files=run_files, run_file_rows_read=run_read,
        run_file_rows_new=run_new, run_file_rows_merged=run_attached - run_new,
        run_file_rows_quarantined=run_quarantined, file_only_providers=file_only, providers=provider.num_rows,
    )
