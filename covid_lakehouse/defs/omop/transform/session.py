"""The DuckDB session every transform step runs in: an in-memory connection with the row-cleaning
macros, and the helpers the steps share (Arrow results conformed to a schema; numpy fast paths that
stand in for joins and aggregations on millions of rows: IdLookup reads ``provider_ids``,
register_repeated and lowest_per_key register ``<name>`` / ``<table>_repeated``)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from covid_lakehouse.defs.omop import tables
from covid_lakehouse.lib.settings import SettingError, setting

MEMORY_LIMIT = setting("OMOP_DUCKDB_MEMORY_LIMIT", "memory a tenant step's DuckDB session may use before it spills "
                       "to OMOP_DUCKDB_TEMP_DIR (DuckDB size syntax: 2GB, 256MB)", default="256MB", scope="omop")
THREADS = setting("OMOP_DUCKDB_THREADS", "threads of a tenant step's DuckDB session; unset: one per core (each "
                  "thread pins its own buffers, so fewer lower the least OMOP_DUCKDB_MEMORY_LIMIT a step needs)",
                  scope="omop")
TEMP_DIR = setting("OMOP_DUCKDB_TEMP_DIR", "where DuckDB spills beyond OMOP_DUCKDB_MEMORY_LIMIT; unset: "
                   "covid_lakehouse_duckdb in the system temp directory", scope="omop")

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
    # An NPI is held as its number (faster joins than text); its text is the ten digits, zero padded.
    "CREATE MACRO npi_text(n) AS lpad(n::VARCHAR, 10, '0')",
    # The specialty_source_value a row publishes: its SpecSource, else its Specialty. Applied to the two
    # values' dictionary keys or to their cleaned texts alike (a key is NULL exactly when its text is).
    "CREATE MACRO spec_source_first(specialty, spec_source) AS coalesce(spec_source, specialty)",
]


def connect() -> duckdb.DuckDBPyConnection:
    """An in-memory session bounded by OMOP_DUCKDB_MEMORY_LIMIT: beyond it DuckDB spills to disk rather
    than growing with the tenant (by default it may take 80% of the machine)."""
    spill = Path(TEMP_DIR.get() or Path(tempfile.gettempdir()) / "covid_lakehouse_duckdb")
    spill.mkdir(parents=True, exist_ok=True)
    config = {"memory_limit": MEMORY_LIMIT.get(), "temp_directory": str(spill)}
    threads = THREADS.number(minimum=1)
    if threads is not None:
        if threads != int(threads):
            raise SettingError(f"{THREADS.name}={THREADS.get()!r} is not a whole number: {THREADS.doc}")
        config["threads"] = int(threads)
    try:
        con = duckdb.connect(":memory:", config=config)
    except duckdb.Error as err:
        raise SettingError(f"{MEMORY_LIMIT.name}={MEMORY_LIMIT.get()!r}, {THREADS.name}={THREADS.get()!r}: {err}") from err
    con.execute("SET enable_progress_bar = false")  # it would print into the run's logs
    con.execute("SET TimeZone = 'UTC'")
    for macro in MACROS:
        con.execute(macro)
    return con


def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# The DuckDB type of each Arrow type the state schemas (tables.py) use, as DuckDB itself maps it.
DUCKDB_TYPES = {pa.string(): "VARCHAR", pa.int64(): "BIGINT", pa.int32(): "INTEGER", tables.TS: "TIMESTAMP WITH TIME ZONE"}


def duckdb_type(table: str, field: pa.Field) -> str:
    """The DuckDB type a state file's column is read as: a type not in DUCKDB_TYPES is named with its
    column rather than guessed."""
    try:
        return DUCKDB_TYPES[field.type]
    except KeyError:
        raise TypeError(f"state table {table!r}, column {field.name!r}: Arrow type {field.type} has no DuckDB type "
                        f"in session.DUCKDB_TYPES (it knows {', '.join(map(str, DUCKDB_TYPES))})") from None


def register_state(con: duckdb.DuckDBPyConnection, name: str, data: pa.Table | Sequence[Path],
                   schema: pa.Schema) -> None:
    """Register a state table as ``name``: an Arrow table as is, or its parquet files (a lakehouse table's
    materialized snapshot) as a view DuckDB scans, so a tenant-sized state never sits in Python memory.
    The files are read by column name and conformed to ``schema``: a column a file lacks (added to the
    table after it was written) reads as NULL of the schema's type."""
    if isinstance(data, pa.Table):
        con.register(name, data)
        return
    if not data:
        con.register(name, schema.empty_table())
        return
    files = f"{name}_files"
    con.read_parquet([str(path) for path in data], union_by_name=True).create_view(files)
    present = {column for column, *_ in con.execute(f"DESCRIBE {quoted(files)}").fetchall()}
    columns = ", ".join(f"CAST({quoted(f.name) if f.name in present else 'NULL'} AS {duckdb_type(name, f)}) "
                        f"AS {quoted(f.name)}" for f in schema)
    con.execute(f"CREATE VIEW {quoted(name)} AS SELECT {columns} FROM {quoted(files)}")


def used_params(query: str, params: dict | None) -> dict:
    """DuckDB rejects unused named parameters: pass only those the query mentions."""
    return {k: v for k, v in (params or {}).items() if f"${k}" in query}


def to_arrow(con: duckdb.DuckDBPyConnection, query: str, schema: pa.Schema, params: dict | None = None) -> pa.Table:
    return tables.conform(con.sql(query, params=used_params(query, params)).to_arrow_table(), schema)


# Rows per batch when an output streams from DuckDB into its parquet file: a few MB of Arrow at a time.
BATCH_ROWS = 64 * 1024
# Output columns with (nearly) one value per row: a dictionary never pays off for them, yet the writer
# would build one in every row group before falling back to plain encoding (a third of the write time
# of the provider, provenance and id map outputs at 2,000,000 providers, and larger files).
UNIQUE_COLUMNS = frozenset({"provider_id", "npi", "provider_source_value", "natural_key", "id", "source_key",
                            "row_hash", "record"})


def parquet_writer(path: Path, schema: pa.Schema) -> pq.ParquetWriter:
    """The writer of a transform output: dictionaries only for the columns that repeat values."""
    return pq.ParquetWriter(path, schema, use_dictionary=[f.name for f in schema if f.name not in UNIQUE_COLUMNS])


def write_parquet(con: duckdb.DuckDBPyConnection, query: str, schema: pa.Schema, path: Path | None,
                  params: dict | None = None, *, batch=None, writer: pq.ParquetWriter | None = None) -> int:
    """Stream ``query``'s rows into the parquet file ``path`` one batch at a time, each conformed to
    ``schema`` (after ``batch(table)`` when given, e.g. to attach ids), so an output never sits whole in
    memory; ``writer``: append to an open writer instead. Returns the rows written."""
    reader = con.sql(query, params=used_params(query, params)).to_arrow_reader(BATCH_ROWS)
    own = writer is None
    writer = writer or parquet_writer(path, schema)
    rows = 0
    try:
        # Written in this thread, not behind it (lib/memory.py write_behind): DuckDB's next batch would be
        # made meanwhile, but the batches and the writer thread's buffers raised the step's peak (DuckDB's
        # session, now) by 20-35 MB at 2,000,000 providers (measured).
        for record_batch in reader:
            table = pa.Table.from_batches([record_batch])
            table = tables.conform(batch(table) if batch else table, schema)
            writer.write_table(table)
            rows += table.num_rows
    finally:
        if own:
            writer.close()
    return rows


# The numpy fast paths below hold at most this many of a tenant's values at a time (8 bytes each; 16 for
# IdLookup's pairs): a larger tenant is taken in slices of its keys (by hash), so their memory stays
# the same however large the tenant (a whole 8M tenant's arrays made its peak grow past the 2M one's).
SLICE_ROWS = 1 << 21


def scalar(con: duckdb.DuckDBPyConnection, query: str):
    """The one value ``query`` returns (fetched to the end: the connection is free for the next query)."""
    [(value,)] = con.execute(query).fetchall()
    return value


def slice_count(con: duckdb.DuckDBPyConnection, query: str) -> int:
    """How many key slices the rows of ``query`` need to stay within SLICE_ROWS each."""
    return max(1, -(-scalar(con, f"SELECT count(*) FROM ({query})") // SLICE_ROWS))


def in_slice(column: str, part: int, parts: int) -> str:
    """SQL condition: ``column``'s value falls in key slice ``part`` of ``parts`` (TRUE when one slice).
    Hashed as BIGINT whatever the column's type: DuckDB hashes a negative INTEGER and the same BIGINT
    differently, and file-only providers have negative gids."""
    return "TRUE" if parts == 1 else f"hash(CAST({column} AS BIGINT)) % {parts} = {part}"


class IdLookup:
    """gid -> provider_id of the published providers (table ``provider_ids``) in one key slice (all of
    them when ``parts`` is 1), sorted once for binary search: attaching ids to millions of rows this way
    is several times faster than a hash join, and keeps the rows' order."""

    def __init__(self, con: duckdb.DuckDBPyConnection, part: int = 0, parts: int = 1, *, in_gid_order: bool = False):
        # Not a NULL gid: no row looks one up, and fetched into numpy it would read as 0.
        query = f"SELECT gid, id FROM provider_ids WHERE gid IS NOT NULL AND {in_slice('gid', part, parts)}"
        # ``in_gid_order``: provider_ids was written in gid order (a first run's, ids.settle_claims says so):
        # taken as it is (checked: a comparison of neighbours). Else (a rerun's kept ids come first) sorted
        # by DuckDB at once (within its memory limit, not an argsort and two copies in numpy): fetched once,
        # not first as it is only to find it unordered.
        if in_gid_order:
            self.gids, self.ids = self._fetch(con, query)
            if np.all(self.gids[1:] > self.gids[:-1]):
                return
            self.release()
        self.gids, self.ids = self._fetch(con, f"{query} ORDER BY gid")

    @staticmethod
    def _fetch(con: duckdb.DuckDBPyConnection, query: str) -> tuple[np.ndarray, np.ndarray]:
        rows = con.execute(query).fetchnumpy()
        # numpy drops a NULL's mask (it would read as id 0, another provider's id perhaps): every published
        # provider has an id (settle_claims), so one without is a fault of the transform, not passed on.
        if np.ma.isMaskedArray(rows["id"]) and (missing := int(np.ma.count_masked(rows["id"]))):
            raise ValueError(f"provider_ids: {missing} provider(s) without an id (gid "
                             f"{np.asarray(rows['gid'])[np.ma.getmaskarray(rows['id'])][:5].tolist()}...)")
        return np.asarray(rows["gid"], dtype=np.int64), np.asarray(rows["id"], dtype=np.int64)

    @staticmethod
    def slices(con: duckdb.DuckDBPyConnection, *, in_gid_order: bool = False
               ) -> Iterator[tuple[IdLookup, Callable[[str], str]]]:
        """One lookup per key slice of ``provider_ids``, each with the condition that selects the rows
        whose gid column (the argument) falls in its slice; one lookup is held at a time. ``in_gid_order``:
        see __init__."""
        parts = slice_count(con, "SELECT gid FROM provider_ids")
        for part in range(parts):
            lookup = IdLookup(con, part, parts, in_gid_order=in_gid_order)
            yield lookup, lambda column, part=part: in_slice(column, part, parts)
            lookup.release()  # before the next slice loads, though the caller may still hold it

    def release(self) -> None:
        self.gids = self.ids = np.empty(0, dtype=np.int64)

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


def int_column(con: duckdb.DuckDBPyConnection, query: str) -> np.ndarray:
    """The single integer column of ``query`` (which must exclude NULLs) as a numpy array."""
    (values,) = con.execute(query).fetchnumpy().values()
    return np.asarray(values, dtype=np.int64)


def register_repeated(con: duckdb.DuckDBPyConnection, name: str, query: str) -> int:
    """Register as table ``name`` (column ``value``) the values of ``query``'s integer column that
    occur more than once; returns how many. On millions of mostly distinct values, sorting finds the
    repeats several times faster than a hash aggregation does; a value's repeats share its key slice."""
    parts = slice_count(con, query)
    repeated = []
    for part in range(parts):
        values = int_column(con, f"SELECT v FROM ({query}) AS q(v) WHERE {in_slice('v', part, parts)}")
        values.sort()  # in place: no second slice-sized copy
        repeats = values[1:][values[1:] == values[:-1]]  # sorted: no np.unique (a sort) to drop their copies
        repeated.append(repeats[np.append(True, repeats[1:] != repeats[:-1])] if len(repeats) else repeats)
        del values
    found = np.concatenate(repeated)  # in no particular order: it is only matched against (IN)
    con.register(name, pa.table({"value": pa.array(found, pa.int64())}))
    return len(found)


def lowest_per_key(con: duckdb.DuckDBPyConnection, table: str, key: str, value: str) -> None:
    """Keep one row per ``key`` in ``table``, the one with the lowest ``value``. Keys repeat only
    after overlapping runs, so the (costly) aggregation runs only when one does."""
    if register_repeated(con, f"{table}_repeated", f"SELECT {key} FROM {table} WHERE {key} IS NOT NULL"):
        con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT {key}, min({value}) AS {value} FROM {table} "
                    f"GROUP BY {key}")
