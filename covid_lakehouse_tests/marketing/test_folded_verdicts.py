"""A streamed load's folded verdicts (load.FoldedAudit) need no database: after the last page, when every
audit has its verdict from a fold (or from the merge itself), the publish checks out no warehouse
connection for them."""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date

import dagster as dg
import psycopg
import pyarrow as pa
import pytest

from covid_lakehouse.defs.marketing.checks import FACEBOOK_AUDITS, KEY_UNIQUE
from covid_lakehouse.defs.marketing.load import (
    FoldedAudit,
    SliceVersions,
    StagingWriter,
    StreamingMerge,
    stage_audit_publish,
)
from covid_lakehouse.defs.marketing.tables import FACEBOOK, SCHEMA, ensure_tables
from covid_lakehouse.lib.postgres import PostgresResource

pytestmark = pytest.mark.integration

KEY = dg.AssetKey([SCHEMA, FACEBOOK.name])
# every Facebook audit a fold answers, and the key audit (answered by the merge: every row COPYed under the key)
AUDITS = [KEY_UNIQUE, *(a for a in FACEBOOK_AUDITS if isinstance(a, FoldedAudit) and a.judge is not None)]


class NoConnections(PostgresResource):
    """A warehouse that refuses to hand out a connection: asking for one fails the test."""

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        raise AssertionError("a folded verdict checked out a warehouse connection")
        yield  # pragma: no cover


def facebook_rows(ads: list[str], clicks: int) -> pa.Table:
    n = len(ads)
    values = {name: [f"{name}-x"] * n for name in FACEBOOK.arrow_schema.names}
    values.update(account_id=["1"] * n, date=[date(2024, 3, 1)] * n, ad_id=ads, impressions=[10] * n,
                  clicks=[clicks] * n, spend=["1.5"] * n, actions=["[]"] * n, raw_object=["s3://raw/p#1.json"] * n)
    return pa.table(values, schema=FACEBOOK.arrow_schema)


def test_folded_verdicts_check_out_no_connection(clean_marketing, warehouse, pg) -> None:
    with warehouse.connection() as conn:
        ensure_tables(conn)
    with StagingWriter(warehouse, FACEBOOK, slice_columns=("account_id", "date")) as staging, \
            warehouse.connection() as conn:
        merging = StreamingMerge(conn, FACEBOOK, SliceVersions("a run", "account_id", "date"),
                                 key_unique_audit=KEY_UNIQUE.name)
        staging.merge_into(merging)
        staging.fold_audits(AUDITS)
        staging.write(facebook_rows(["a1", "a2"], clicks=2), pages=1)
        staging.write(facebook_rows(["a3"], clicks=20), pages=1)  # clicks above impressions: a WARN, from its fold
        steps = stage_audit_publish(NoConnections(dsn="postgresql://nowhere"), FACEBOOK, audits=AUDITS, asset_key=KEY,
                                    staged=staging, merging=merging)
        checks = []
        try:
            while True:
                checks.append(next(steps))
        except StopIteration as done:
            published = done.value
    assert published.counts.inserted == 3
    verdicts = {c.check_name: c.passed for c in checks}
    assert verdicts == {a.name: a.name != "clicks_not_above_impressions" for a in AUDITS}
    assert pg.execute(f"SELECT count(*) FROM {SCHEMA}.{FACEBOOK.name}").fetchone()[0] == 3
