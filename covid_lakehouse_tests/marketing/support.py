"""Helpers shared by marketing test modules: a probe table (id, v, raw_object) to stage and merge into, and
Facebook rows staged and published, streamed or not, and the check results as compared word for word."""

from collections.abc import Callable, Sequence
from datetime import date

import dagster as dg
import pyarrow as pa
import pytest
from psycopg import sql

from covid_lakehouse.defs.marketing.checks import KEY_UNIQUE
from covid_lakehouse.defs.marketing.load import (
    SliceVersions,
    StagingWriter,
    StreamingMerge,
    stage_audit_publish,
)
from covid_lakehouse.defs.marketing.tables import FACEBOOK, SCHEMA, TableSpec, ensure_tables
from covid_lakehouse.lib.postgres import PostgresResource
from covid_lakehouse.lib.wap import Audit, BlockingAuditFailed


def probe_spec(name: str) -> TableSpec:
    return TableSpec(name=name, arrow_schema=pa.schema([("id", pa.int64()), ("v", pa.string()),
                                                        ("raw_object", pa.string())]), key=("id",))


def create_probe(warehouse: PostgresResource, spec: TableSpec) -> TableSpec:
    """The probe's published table, with its primary key (the marketing schemas come from the migrations)."""
    with warehouse.connection() as conn:
        ensure_tables(conn)
        conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, v text, raw_object text NOT NULL, "
                             "updated_at timestamptz NOT NULL DEFAULT now())").format(spec.ident))
    return spec


def probe_fixture(name: str) -> tuple[TableSpec, str, Callable]:
    """A module's probe table ``name``: its spec, its qualified name (for SQL and messages) and a ``probe``
    fixture that creates it afresh for each test (bind it to a module attribute: pytest finds it there)."""
    spec = probe_spec(name)

    @pytest.fixture
    def probe(clean_marketing, warehouse: PostgresResource) -> TableSpec:
        return create_probe(warehouse, spec)

    return spec, f"{SCHEMA}.{name}", probe


def probe_rows(spec: TableSpec, *ids: int, v: str = "x") -> pa.Table:
    return pa.table({"id": list(ids), "v": [v] * len(ids), "raw_object": ["s3://raw/p#1.json"] * len(ids)},
                    schema=spec.arrow_schema)


FacebookRow = tuple[str, date, str | None, int, int, str]  # account_id, date, ad_id, impressions, clicks, spend


def facebook_rows(rows: Sequence[FacebookRow]) -> pa.Table:
    """Facebook insight rows to stage: the given key and metrics, every other column a placeholder."""
    n = len(rows)
    values = {name: [f"{name}-x"] * n for name in FACEBOOK.arrow_schema.names}
    values.update(account_id=[r[0] for r in rows], date=[r[1] for r in rows], ad_id=[r[2] for r in rows],
                  impressions=[r[3] for r in rows], clicks=[r[4] for r in rows], spend=[r[5] for r in rows],
                  actions=["[]"] * n, raw_object=["s3://raw/p#1.json"] * n)
    return pa.table(values, schema=FACEBOOK.arrow_schema)


def publish_facebook(warehouse: PostgresResource, chunks: Sequence[Sequence[FacebookRow]], audits: Sequence[Audit], *,
                     reported: dict | None = None, stream: bool = True,
                     after_staging: Callable[[sql.Identifier], None] | None = None,
                     audit_warehouse: PostgresResource | None = None
                     ) -> tuple[list[dg.AssetCheckResult], BaseException | None, StagingWriter]:
    """Stage ``chunks`` (one COPY each) into the Facebook table and publish them with ``audits`` and the API's
    totals ``reported``: streamed (merged and folded chunk by chunk) or not (audited by scans of the staging
    table). ``after_staging`` gets the staging table after the last chunk; ``audit_warehouse`` is what
    stage_audit_publish checks out the audits' connections from. The check results, the blocking failure
    (then rolled back) and the writer."""
    checks: list[dg.AssetCheckResult] = []
    versions = SliceVersions("a run", "account_id", "date")
    with StagingWriter(warehouse, FACEBOOK, slice_columns=("account_id", "date")) as staging, \
            warehouse.connection() as conn:
        merging = None
        if stream:
            merging = StreamingMerge(conn, FACEBOOK, versions, key_unique_audit=KEY_UNIQUE.name)
            staging.merge_into(merging)
            staging.fold_audits(audits)
        for chunk in chunks:
            staging.write(facebook_rows(chunk), pages=1)
            staging.flush()
        if after_staging is not None:
            after_staging(staging.finish())
        steps = stage_audit_publish(audit_warehouse or warehouse, FACEBOOK, audits=audits,
                                    asset_key=dg.AssetKey([SCHEMA, FACEBOOK.name]), staged=staging, reported=reported,
                                    versions=None if stream else versions, merging=merging)
        try:
            while True:
                checks.append(next(steps))
        except StopIteration:
            return checks, None, staging
        except BlockingAuditFailed as err:
            conn.rollback()
            return checks, err, staging


def said(checks: Sequence[dg.AssetCheckResult]) -> list[tuple]:
    """What the checks say, to compare two runs' results word for word."""
    return [(c.check_name, c.passed, c.severity, c.description, c.metadata) for c in checks]
