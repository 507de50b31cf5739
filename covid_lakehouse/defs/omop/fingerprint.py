"""A tenant's source fingerprint: one digest that changes whenever anything a run reads changes, so a
run can tell "nothing changed" before extracting anything, and skip the tenant.

- PostgreSQL (provider, care_site), the content: per table the row count and the sum of every row's
  64-bit hash (summed as an exact numeric: order-independent, so an insert+delete pair, an update, a
  delete or a reload with other content all move it; two different contents collide with odds of
  about 2^-64), plus each column's name, position, type (with its modifier) and NOT NULL, read in one
  REPEATABLE READ read-only transaction (the tables locked first, so the column list holds for the
  scan). A row's hash chains its columns (_row_hash): each column's hash is seeded with the hash of
  the ones before it, so it is no linear mix of per-column hashes, which a sum over rows would let a
  value swapped between two rows cancel out (``hash_record_extended`` is one: 31*h + h'), and the
  chain is mixed once more at the end (a text hash's upper half alone is weakly mixed). Integer and
  text columns are hashed by value (text by its bytes, collation "C"), every other column by its
  text, so a change that only alters how a value prints (numeric 1.0 -> 1.00) counts too, as when
  whole rows were hashed as text, without that text's output function on every row (its cost; the
  figures are in docs/omop.md, Performance). TRUNCATE + reload of the very same rows gives the same
  content fingerprint: all the transform reads is the same. Exact, but one scan of each table: hence
  the cheap signal below, read first.
- PostgreSQL, the cheap signal, read first: per table its storage file (``pg_relation_filenode``: a
  TRUNCATE, a rewriting ALTER, VACUUM FULL or a restore give a new one) and size, the statistics
  system's cumulative insert/update/delete counters (every row an INSERT, UPDATE, DELETE, COPY or MERGE
  touches, committed or not), the column definitions, and the guards that tell when the counters
  could have been lost: ``track_counts``, the server's start time, the database's and the archiver's
  statistics reset times (a restart, crash recovery or pg_stat_reset moves one), and counters that
  are all zero (what a reset leaves) vouch for nothing. When the signal equals the one the last
  successful run recorded, its content fingerprint is taken over without reading a row; otherwise
  the content is hashed (and an unchanged content with a moved signal is skipped all the same).
  Not max(xmin) (a scan, and it wraps).

  Why the counters may be trusted: they only grow with writes, so any write moves them. What they
  lack is transactionality: a writer's counts reach the shared statistics when its session goes idle,
  at most once a second (longer if the statistics lock is contended). A change whose counts are not
  yet visible when the gate reads them is treated exactly like a change committed just after the gate:
  this run does not see it, the next one does (its counts are visible by then, and they never come
  back down), so it is never lost. The signal is read before the content snapshot, so whatever it
  counts is in the content this run hashes and extracts: a recorded signal never vouches for a change
  the recorded content lacks. Left over: a superuser session that turns track_counts off and writes,
  or that resets one table's counters and then writes exactly as many rows in place, would go
  unnoticed until the next counted change; the ``full_refresh`` run config covers such maintenance.
- Landing prefix: every object's key, ETag and size (the listing the landing step also ingests
  from): a file replaced under the same key, a new file or a deleted one all change it.
- The tenant's configuration and the omop code and data files (a deploy that changes the transform
  or the specialty map must refresh every tenant once); the code digest is computed once per process.

Both digests are recorded in run_log by the run that published from them (the last write of a tenant
run), so they are only "recorded" when every publish committed.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import psycopg
from psycopg import sql

from covid_lakehouse.defs.omop.extract import lock_for_read, source_errors
from covid_lakehouse.defs.omop.landing import LandingObject
from covid_lakehouse.defs.omop.tenants import Tenant
from covid_lakehouse.lib.postgres import table_ident

# Bump when the meaning of the fingerprint changes (every tenant then runs once).
VERSION = 4
SOURCE_TABLES = ("care_site", "provider")
_OMOP_DIR = Path(__file__).parent

# Each row's 64-bit hash (_row_hash), summed exactly (sum(bigint) is numeric: it never wraps).
_ROW_HASHES = "select count(*), coalesce(sum({}), 0)::text from {}"
# Types whose values print one way each (equal values, equal text): hashed by value, no output
# function per row. Not bigint: its hash folds the value to 32 bits (1 and 2^32 hash alike).
_INTEGERS = frozenset({"smallint", "integer"})
_TEXT = frozenset({"text", "character varying"})
_COLUMNS = """
select c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull
from pg_attribute a join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace
where n.nspname = %s and c.relname = any(%s) and a.attnum > 0 and not a.attisdropped
order by c.relname, a.attnum
"""


# The cheap signal: per table its storage file (TRUNCATE, a rewrite or a restore give a new one) and
# the cumulative insert/update/delete counters of the statistics system, plus what would make those
# counters unreliable: counting off, or a server restart, crash recovery or a statistics reset (each
# either moves a timestamp here or zeroes the counters).
_SIGNAL = """
select c.relname, c.relkind::text, pg_relation_filenode(c.oid)::text, pg_relation_size(c.oid),
       s.n_tup_ins, s.n_tup_upd, s.n_tup_del
from pg_class c join pg_namespace n on n.oid = c.relnamespace
left join pg_stat_user_tables s on s.relid = c.oid
where n.nspname = %s and c.relname = any(%s)
order by c.relname
"""
_SIGNAL_GUARDS = """
select current_setting('track_counts'), pg_postmaster_start_time()::text,
       (select stats_reset::text from pg_stat_database where datname = current_database()),
       (select stats_reset::text from pg_stat_archiver)
"""


@dataclass(frozen=True)
class Fingerprint:
    digest: str  # the content fingerprint: recorded as run_log.source_fingerprint
    signal: str | None  # the cheap signal's digest (run_log.source_signal); None: not usable here
    checked: str  # "signal": the signal equalled the recorded one, no table was read; "content": hashed
    parts: dict  # what went into the digest, for the UI and logs

    def summary(self) -> dict[str, object]:
        tables = self.parts.get("postgres", {}).get("tables", {})
        return {"source_fingerprint": self.digest, "source_signal": self.signal or "none",
                "fingerprint_checked": self.checked, "landing_objects": self.parts["landing"]["objects"],
                **{f"source_rows_{table}": tables[table]["rows"] for table in SOURCE_TABLES if table in tables}}


def postgres_signal(conn: psycopg.Connection, tenant: Tenant) -> dict | None:
    """The counters and storage of the source tables and their columns, read without touching a row;
    None when they cannot vouch for the tables (statistics not counted, a table without counters)."""
    with conn.cursor() as cur:
        cur.execute(_SIGNAL_GUARDS)
        track_counts, *guards = cur.fetchone()
        cur.execute(_SIGNAL, (tenant.source_schema, list(SOURCE_TABLES)))
        tables = [list(row) for row in cur.fetchall()]
        cur.execute(_COLUMNS, (tenant.source_schema, list(SOURCE_TABLES)))
        columns = [list(row) for row in cur.fetchall()]
    # Counters all zero are what a reset or a crash leaves: they vouch for nothing.
    if track_counts != "on" or len(tables) != len(SOURCE_TABLES) or any(
            kind != "r" or ins is None or not (ins or upd or dele) for _, kind, _, _, ins, upd, dele in tables):
        return None
    return {"guards": guards, "tables": tables, "columns": columns}


def _row_hash(columns: list[tuple[str, str]]) -> sql.Composable:
    """A row's 64-bit hash of its ``columns`` (name, type): each column's hash seeded with the hash of
    the columns before it, the seed's lowest bit flipped for a NULL (NULL and '' differ)."""
    row_hash: sql.Composable = sql.SQL("0::bigint")
    for name, type_name in columns:
        column, base_type = sql.Identifier(name), re.sub(r"\(.*?\)", "", type_name)
        seed = sql.SQL("{} # ({} is null)::integer::bigint").format(row_hash, column)
        if base_type in _INTEGERS:
            row_hash = sql.SQL("hashint4extended(coalesce({}, 0), {})").format(column, seed)
        elif base_type in _TEXT:  # collation "C": a nondeterministic one's hash takes 'a' and 'A' for one
            row_hash = sql.SQL("hashtextextended(coalesce({}, '') collate \"C\", {})").format(column, seed)
        else:  # its text as a row prints it: a plain ::text would drop a bpchar's trailing blanks
            row_hash = sql.SQL("hashtextextended(row({})::text collate \"C\", {})").format(column, seed)
    # Mixed once more, through the seed (which stirs all 64 bits): the upper half of a text hash is
    # weakly mixed, so two rows reaching a text column with one seed (a table led by a text column)
    # could have two small edits cancel in the sum; measured 1-3 pairs in a million edits without this.
    return sql.SQL("hashint4extended(0, {})").format(row_hash)


def postgres_content(conn: psycopg.Connection, tenant: Tenant) -> dict:
    """Row hashes and column definitions of the tenant's source tables, from one snapshot."""
    result: dict = {"tables": {}}
    conn.autocommit = False
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    with conn.transaction(), conn.cursor() as cur:
        # Locked before the snapshot and the column list: no column can change before the scans.
        for table in SOURCE_TABLES:
            with source_errors(tenant, table):
                lock_for_read(conn, tenant.source_schema, table)
        cur.execute(_COLUMNS, (tenant.source_schema, list(SOURCE_TABLES)))
        result["columns"] = [list(row) for row in cur.fetchall()]
        for table in SOURCE_TABLES:
            row_hash = _row_hash([(name, type_name) for relname, _, name, type_name, _ in result["columns"]
                                  if relname == table])
            with source_errors(tenant, table):
                cur.execute(sql.SQL(_ROW_HASHES).format(row_hash, table_ident(tenant.source_schema, table)))
                rows, hashes = cur.fetchone()
            result["tables"][table] = {"rows": rows, "hash": hashes}
    return result


def _connect(tenant: Tenant) -> psycopg.Connection:
    return psycopg.connect(tenant.source_dsn(), connect_timeout=10, autocommit=True,
                           application_name="covid_lakehouse_omop_fingerprint")


def postgres_part(tenant: Tenant) -> dict:
    """The content part alone (row hashes and columns), on its own connection."""
    with _connect(tenant) as conn:
        return postgres_content(conn, tenant)


def landing_part(objects: list[LandingObject]) -> dict:
    listing = sorted(f"{o.key}\0{o.etag}\0{o.size}" for o in objects)
    return {"objects": len(listing), "digest": hashlib.sha256("\n".join(listing).encode()).hexdigest()}


@cache
def code_digest() -> str:
    """The omop package's code and data files, once per process."""
    digest = hashlib.sha256()
    for path in sorted(p for p in _OMOP_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(_OMOP_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _digest(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _common(tenant: Tenant, landing: list[LandingObject]) -> dict:
    return {
        "version": VERSION, "code": code_digest(),
        "tenant": {"source_schema": tenant.source_schema, "landing_bucket": tenant.landing_bucket,
                   "landing_prefix": tenant.prefix},
        "landing": landing_part(landing),
    }


def _signal(conn: psycopg.Connection, tenant: Tenant, common: dict) -> tuple[str | None, dict | None]:
    signal_part = postgres_signal(conn, tenant)
    return (_digest({**common, "signal": signal_part}) if signal_part is not None else None), signal_part


def signal(tenant: Tenant, landing: list[LandingObject]) -> str | None:
    """The cheap signal alone (no row read): what a schedule or sensor tick compares with the recorded
    one before launching a run. None when the counters cannot vouch for the tables."""
    with _connect(tenant) as conn:
        return _signal(conn, tenant, _common(tenant, landing))[0]


def signal_vouches(recorded: dict | None, signal: str | None) -> bool:
    """Whether ``signal`` is the one the last successful run (``recorded``, its run_log row) read
    before hashing its content: that content fingerprint then still holds, no row need be read. The
    one rule of the in-run gate (fingerprint) and the pre-launch gate (gate.py)."""
    return bool(signal is not None and recorded is not None and recorded.get("source_fingerprint")
                and recorded.get("source_signal") == signal)


def fingerprint(tenant: Tenant, landing: list[LandingObject], recorded: dict | None = None) -> Fingerprint:
    """The tenant's fingerprint. ``recorded``: the last successful run's run_log row; when its signal
    equals the one read now, its content fingerprint is taken over without reading the tables."""
    common = _common(tenant, landing)
    with _connect(tenant) as conn:
        # The signal is read before the content snapshot is taken: every change it counts is then in
        # the content this run hashes (and extracts), never only in the recorded signal.
        signal, signal_part = _signal(conn, tenant, common)
        if signal_vouches(recorded, signal):
            return Fingerprint(recorded["source_fingerprint"], signal, "signal", {**common, "signal": signal_part})
        content = postgres_content(conn, tenant)
    return Fingerprint(_digest({**common, "postgres": content}), signal, "content",
                       {**common, "postgres": content, "signal": signal_part})
