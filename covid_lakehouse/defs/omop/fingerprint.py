"""A tenant's source fingerprint: one digest that changes whenever anything a run reads changes, so a
run can tell "nothing changed" before extracting anything, and skip the tenant.

- PostgreSQL (provider, care_site): per table the row count and the sum of every row's 64-bit hash
  (``hashtextextended`` of the row as text, summed as an exact numeric: order-independent, so an
  insert+delete pair, an update, a delete or a reload with other content all move it; two different
  contents collide with odds of about 2^-64), plus each column's name, position, type (with its
  modifier) and NOT NULL. Rows are hashed whole as text, not only the columns we extract, so any
  change to the table counts, including one that only changes how a value prints (1.0 -> 1.00, which
  a value hash such as hash_record_extended would miss). md5 instead costs 2.5x the time for nothing
  the extract would notice. Read in one REPEATABLE READ read-only transaction: the
  tables and their columns come from one snapshot. Not max(xmin) (wraps around, misses deletes) and
  not pg_stat counters (flushed late, reset by a crash or pg_stat_reset, not transactional): this
  is exact. TRUNCATE + reload of the very same rows gives the same fingerprint, and rightly so: the
  content, all the transform reads, is the same.
- Landing prefix: every object's key, ETag and size (the listing the landing step also ingests
  from): a file replaced under the same key, a new file or a deleted one all change it.
- The tenant's configuration and the omop code and data files (a deploy that changes the transform
  or the specialty map must refresh every tenant once).

The digest is recorded in run_log by the run that published from it (the last write of a tenant
run), so it is only "recorded" when every publish committed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import psycopg
from psycopg import sql

from covid_lakehouse.defs.omop.extract import source_errors
from covid_lakehouse.defs.omop.landing import LandingObject
from covid_lakehouse.defs.omop.tenants import Tenant
from covid_lakehouse.lib.postgres import table_ident

# Bump when the meaning of the fingerprint changes (every tenant then runs once).
VERSION = 1
SOURCE_TABLES = ("care_site", "provider")
_OMOP_DIR = Path(__file__).parent

# Each row's 64-bit hash of its text, summed exactly (sum(bigint) is numeric: it never wraps).
_ROW_HASHES = "select count(*), coalesce(sum(hashtextextended(t::text, 0)), 0)::text from {} as t"
_COLUMNS = """
select c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull
from pg_attribute a join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace
where n.nspname = %s and c.relname = any(%s) and a.attnum > 0 and not a.attisdropped
order by c.relname, a.attnum
"""


@dataclass(frozen=True)
class Fingerprint:
    digest: str
    parts: dict  # what went into the digest, for the UI and logs

    def summary(self) -> dict[str, object]:
        pg = self.parts["postgres"]
        return {"source_fingerprint": self.digest, "landing_objects": self.parts["landing"]["objects"],
                **{f"source_rows_{table}": pg["tables"][table]["rows"] for table in SOURCE_TABLES}}


def postgres_part(tenant: Tenant) -> dict:
    """Row hashes and column definitions of the tenant's source tables, from one snapshot."""
    result: dict = {"tables": {}}
    with psycopg.connect(tenant.source_dsn(), connect_timeout=10,
                         application_name="covid_lakehouse_omop_fingerprint") as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction(), conn.cursor() as cur:
            for table in SOURCE_TABLES:
                with source_errors(tenant, table):
                    cur.execute(sql.SQL(_ROW_HASHES).format(table_ident(tenant.source_schema, table)))
                    rows, hashes = cur.fetchone()
                result["tables"][table] = {"rows": rows, "hash": hashes}
            cur.execute(_COLUMNS, (tenant.source_schema, list(SOURCE_TABLES)))
            result["columns"] = [list(row) for row in cur.fetchall()]
    return result


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


def fingerprint(tenant: Tenant, landing: list[LandingObject]) -> Fingerprint:
    parts = {
        "version": VERSION, "code": code_digest(),
        "tenant": {"source_schema": tenant.source_schema, "landing_bucket": tenant.landing_bucket,
                   "landing_prefix": tenant.prefix},
        "postgres": postgres_part(tenant), "landing": landing_part(landing),
    }
    return Fingerprint(hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest(), parts)
