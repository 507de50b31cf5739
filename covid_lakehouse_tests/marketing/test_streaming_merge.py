"""StreamingMerge: a load's staged chunks are merged into the target while the source is still read,
all inside ONE uncommitted transaction: the audits of the whole load still decide, a blocking failure
undoes every chunk merged so far, and the counts and superseded slices come out as for one merge."""

from datetime import UTC, date, datetime

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
from covid_lakehouse.lib.wap import Audit, AuditResult, BlockingAuditFailed
from covid_lakehouse_tests.marketing.support import create_probe, probe_rows, probe_spec

pytestmark = pytest.mark.integration

PROBE = probe_spec("streaming_probe")
D1, D2 = date(2024, 3, 1), date(2024, 3, 2)


@pytest.fixture
def probe(clean_marketing, warehouse: PostgresResource) -> TableSpec:
    return create_probe(warehouse, PROBE)


def run_publish(steps) -> tuple[list, object]:
    checks = []
    while True:
        try:
            checks.append(next(steps))
        except StopIteration as done:
            return checks, done.value


def test_a_blocking_audit_failure_after_chunks_were_merged_leaves_the_target_as_before(probe, warehouse, pg) -> None:
    pg.execute(f"INSERT INTO {SCHEMA}.streaming_probe (id, v, raw_object) VALUES (1, 'first', 'a'), (2, 'first', 'a')")
    before = pg.execute(f"SELECT id, v, raw_object, updated_at FROM {SCHEMA}.streaming_probe ORDER BY id").fetchall()
    refuses_4 = Audit("no_id_4", lambda staged: AuditResult(
        staged.conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE id = 4").format(staged.staging)).fetchone()[0] == 0,
        "id 4 is refused"), blocking=True)
    with pytest.raises(BlockingAuditFailed, match="no_id_4"), StagingWriter(warehouse, probe) as staging:
        with warehouse.connection() as conn:
            merging = StreamingMerge(conn, probe)
            staging.merge_into(merging)
            staging.write(probe_rows(PROBE, 1, 3, v="second"), pages=1)
            staging.flush()  # one chunk staged (and handed to the merge) ...
            staging.write(probe_rows(PROBE, 4, v="second"), pages=1)
            staging.finish()  # ... and another: both merged, in the transaction still open
            merged = conn.execute(f"SELECT id, v FROM {SCHEMA}.streaming_probe ORDER BY id").fetchall()
            assert merged == [(1, "second"), (2, "first"), (3, "second"), (4, "second")]
            assert merging.counts.inserted == 2 and merging.counts.updated == 1
            # nobody else sees a merged chunk before the audits passed
            assert pg.execute(f"SELECT id, v, raw_object, updated_at FROM {SCHEMA}.streaming_probe "
                              "ORDER BY id").fetchall() == before
            run_publish(stage_audit_publish(
                warehouse, probe, audits=[refuses_4], asset_key=dg.AssetKey([SCHEMA, probe.name]), staged=staging,
                merging=merging))
    assert pg.execute(f"SELECT id, v, raw_object, updated_at FROM {SCHEMA}.streaming_probe ORDER BY id").fetchall() == before


def facebook_rows(*rows: tuple[str, date, str, str]) -> pa.Table:
    """(account_id, date, ad_id, spend) rows; every other column a fixed value."""
    n = len(rows)
    values = {name: [f"{name}-x"] * n for name in FACEBOOK.arrow_schema.names}
    values.update(account_id=[r[0] for r in rows], date=[r[1] for r in rows], ad_id=[r[2] for r in rows],
                  spend=[r[3] for r in rows], impressions=[10] * n, clicks=[1] * n, actions=["[]"] * n,
                  raw_object=["s3://raw/p#1.json"] * n)
    return pa.table(values, schema=FACEBOOK.arrow_schema)


def test_counts_add_up_over_chunks_and_a_superseded_slice_stays_out_of_every_chunk(clean_marketing, warehouse, pg) -> None:
    with warehouse.connection() as conn:
        ensure_tables(conn)
    # three runs, by when they fetched: the first publishes, the newer claims account 2's D2 before the
    # older one (which fetched it in between) merges
    first, older, newer = (SliceVersions(name, "account_id", "date") for name in ("first run", "older run", "newer run"))
    first.started, older.started, newer.started = (datetime(2024, 3, 3, h, tzinfo=UTC) for h in (1, 2, 3))
    with StagingWriter(warehouse, FACEBOOK) as staging:
        staging.write(facebook_rows(("1", D1, "a1", "1.00"), ("1", D1, "a2", "2.00"), ("2", D2, "b1", "5.00")), pages=1)
        staging.write(facebook_rows(("2", D2, "b2", "5.00")), pages=1)
        run_publish(stage_audit_publish(warehouse, FACEBOOK, audits=[], asset_key=dg.AssetKey([SCHEMA, FACEBOOK.name]),
                                        staged=staging, versions=first))
    with warehouse.connection() as conn:
        assert newer.claim(conn, FACEBOOK, sql.SQL("unused"), {("2", D2)}) == {}
    published = pg.execute("SELECT account_id, ad_id, round(spend, 2)::text, updated_at FROM marketing.facebook_ad_insights_daily "
                           "ORDER BY 1, 2").fetchall()

    with StagingWriter(warehouse, FACEBOOK, slice_columns=("account_id", "date")) as staging:
        with warehouse.connection() as conn:
            merging = StreamingMerge(conn, FACEBOOK, older)
            staging.merge_into(merging)
            # chunk 1: a1 unchanged, a2 changed, a3 new, b1 of the superseded slice
            staging.write(facebook_rows(("1", D1, "a1", "1.00"), ("1", D1, "a2", "2.50"), ("1", D1, "a3", "3.00"),
                                        ("2", D2, "b1", "9.99")), pages=1)
            staging.flush()
            # chunk 2: the superseded slice again (b2 changed, b3 new), and a new slice
            staging.write(facebook_rows(("2", D2, "b2", "9.99"), ("2", D2, "b3", "9.99"), ("1", D2, "a1", "4.00")),
                          pages=1)
            _, result = run_publish(stage_audit_publish(
                warehouse, FACEBOOK, audits=[], asset_key=dg.AssetKey([SCHEMA, FACEBOOK.name]), staged=staging,
                merging=merging))
    assert (result.staged_rows, result.counts.inserted, result.counts.updated, result.counts.unchanged) == (7, 2, 1, 1)
    assert list(result.superseded) == [("2", D2)]
    after = pg.execute("SELECT account_id, date, ad_id, round(spend, 2)::text FROM marketing.facebook_ad_insights_daily "
                       "ORDER BY 1, 2, 3").fetchall()
    assert after == [("1", D1, "a1", "1.00"), ("1", D1, "a2", "2.50"), ("1", D1, "a3", "3.00"), ("1", D2, "a1", "4.00"),
                     ("2", D2, "b1", "5.00"), ("2", D2, "b2", "5.00")]
    assert [r for r in published if r[0] == "2"] == pg.execute(
        "SELECT account_id, ad_id, round(spend, 2)::text, updated_at FROM marketing.facebook_ad_insights_daily WHERE account_id = '2' "
        "ORDER BY 1, 2").fetchall()  # the newer slice's rows untouched, updated_at included
    versions = pg.execute("SELECT unit, day, source_version FROM marketing.source_versions WHERE source = %s ORDER BY 1, 2",
                          (FACEBOOK.name,)).fetchall()
    assert versions == [("1", D1, "older run"), ("1", D2, "older run"), ("2", D2, "newer run")]


def streamed(warehouse, probe, *chunks: tuple[int, ...]) -> list:
    """Stage and stream-merge ``chunks`` (each its own chunk), audit with the key audit; the check results."""
    checks: list = []
    with StagingWriter(warehouse, probe) as staging, warehouse.connection() as conn:
        merging = StreamingMerge(conn, probe, key_unique_audit=KEY_UNIQUE.name)
        staging.merge_into(merging)
        for n, ids in enumerate(chunks):
            staging.write(probe_rows(PROBE, *ids, v=f"chunk {n}"), pages=1)
            staging.flush()
        steps = stage_audit_publish(warehouse, probe, audits=[KEY_UNIQUE], asset_key=dg.AssetKey([SCHEMA, probe.name]),
                                    staged=staging, merging=merging)
        try:
            while True:
                checks.append(next(steps))
        except StopIteration:
            pass
        except BlockingAuditFailed:
            assert [c.passed for c in checks] == [False]
            raise
    return checks


def test_keys_copied_straight_into_the_table_are_unique_by_its_primary_key(probe, warehouse, pg) -> None:
    [check] = streamed(warehouse, probe, (1, 2), (3,))
    assert check.passed and "under its primary key" in check.description
    assert pg.execute(f"SELECT count(*) FROM {SCHEMA}.streaming_probe").fetchone()[0] == 3


def test_a_key_staged_in_two_chunks_still_fails_the_key_audit(probe, warehouse, pg) -> None:
    """The second chunk's COPY hits the key the first inserted: that chunk is merged (ON CONFLICT), so the
    primary key proves nothing and the audit scans the staged rows."""
    with pytest.raises(BlockingAuditFailed, match="natural_key_unique"):
        streamed(warehouse, probe, (1, 2), (2, 3))
    assert pg.execute(f"SELECT count(*) FROM {SCHEMA}.streaming_probe").fetchone()[0] == 0
