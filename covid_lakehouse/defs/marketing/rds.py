"""The application database on RDS (PostgreSQL): customers and orders, extracted incrementally by
``updated_at`` over the run's day window (the schedule re-reads a trailing look-back window, which also
catches rows committed late) and merged on the primary key.

The source is read in a READ ONLY transaction with a server-side cursor, and e-mail addresses are
hashed (SHA-256 of the trimmed, lower-cased address, the form ad platforms use for customer matching)
inside the source query: plaintext addresses never leave the source database. Hard deletes are not
visible through ``updated_at`` (documented limitation).

MARKETING_RDS_DSN points at the source (MARKETING_RDS_SCHEMA names its schema); unset, a run fails
saying so. ``make demo``/``make up`` point both at a generated source in the warehouse database
(covid_lakehouse_dev/sources/marketing_rds.py).
"""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import dagster as dg
import psycopg
import pyarrow as pa
from psycopg import sql
from pydantic import Field

from covid_lakehouse.defs.marketing.common import SourceSchemaError
from covid_lakehouse.defs.marketing.tables import RDS_CUSTOMERS, RDS_ORDERS, TableSpec
from covid_lakehouse.lib.postgres import validate_identifier
from covid_lakehouse.lib.settings import redact, setting

SOURCE = "rds"
DSN = setting("MARKETING_RDS_DSN", "the application database (use sslmode=verify-full and a read-only role)",
              secret=True, scope="marketing")
SCHEMA = setting("MARKETING_RDS_SCHEMA", "the application database's schema", default="public", scope="marketing")
DSN_ENV, SCHEMA_ENV = DSN.name, SCHEMA.name
FETCH_ROWS = 50_000


@dataclass(frozen=True)
class Extract:
    table: str  # source table
    spec: TableSpec
    select: str  # columns, in spec order; {schema} and {table} are filled with identifiers


CUSTOMERS = Extract("customers", RDS_CUSTOMERS,
                    "SELECT id, encode(sha256(convert_to(lower(btrim(email)), 'UTF8')), 'hex'), country, "
                    "created_at, updated_at FROM {schema}.{table} WHERE updated_at >= %s AND updated_at < %s")
ORDERS = Extract("orders", RDS_ORDERS,
                 "SELECT id, customer_id, status, amount::text, currency, created_at, updated_at "
                 "FROM {schema}.{table} WHERE updated_at >= %s AND updated_at < %s")


@dataclass(frozen=True)
class RdsSource:
    dsn: str
    schema: str

    def describe(self) -> str:
        return f"{redact(self.dsn)} schema {self.schema}"

    def batches(self, extract: Extract, start: datetime, end: datetime) -> Iterator[pa.RecordBatch]:
        """Rows with start <= updated_at < end, as Arrow batches of the target's staging schema."""
        query = sql.SQL(extract.select).format(schema=sql.Identifier(self.schema), table=sql.Identifier(extract.table))
        names = extract.spec.arrow_schema.names
        with psycopg.connect(self.dsn, autocommit=False) as conn:
            conn.read_only = True  # the pipeline can never write to the application database
            try:
                with conn.cursor(name=f"marketing_{extract.table}") as cur:
                    cur.itersize = FETCH_ROWS
                    cur.execute(query, (start, end))
                    while rows := cur.fetchmany(FETCH_ROWS):
                        columns = list(zip(*rows, strict=True))
                        yield pa.record_batch([pa.array(c, t) for c, t in zip(columns, extract.spec.arrow_schema.types,
                                                                               strict=True)], names=names)
            except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn, psycopg.errors.UndefinedFunction) as err:
                raise SourceSchemaError(SOURCE, f"{self.schema}.{extract.table}", str(err).splitlines()[0]) from None


class RdsSourceResource(dg.ConfigurableResource):
    """Where the application database is. The DSN (with its password) comes from MARKETING_RDS_DSN;
    use sslmode=verify-full and a read-only role in production."""

    schema_name: str | None = Field(default=None, description=f"Source schema; unset: {SCHEMA_ENV}, else public")

    def source(self) -> RdsSource:
        dsn = DSN.get()
        if not dsn:
            raise dg.Failure(f"{DSN_ENV} is not set: point it at the application database", allow_retries=False)
        schema = SCHEMA.require(self.schema_name)
        return RdsSource(dsn, validate_identifier(schema, what=SCHEMA_ENV))
