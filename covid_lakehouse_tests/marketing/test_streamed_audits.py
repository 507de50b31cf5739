"""A streamed load (Facebook: load.StreamingMerge) audits every staged chunk as it is staged (load.FoldedAudit):
after the last page only the verdicts are left. They must be the verdicts, words and metadata a scan of the
whole staging table gives, computed on every chunk (a bad row in the first or in the last chunk blocks the
publish), and a blocking failure still rolls the whole run back."""

from datetime import date
from decimal import Decimal

import dagster as dg
import pytest
from psycopg import sql

from covid_lakehouse.defs.marketing.checks import FACEBOOK_AUDITS
from covid_lakehouse.defs.marketing.load import FoldedAudit, StagingWriter
from covid_lakehouse.defs.marketing.tables import FACEBOOK, SCHEMA, ensure_tables
from covid_lakehouse.lib.postgres import PostgresResource
from covid_lakehouse_tests.marketing.support import FacebookRow, publish_facebook, said

pytestmark = pytest.mark.integration

D1, D2 = date(2024, 3, 1), date(2024, 3, 2)
KEY = dg.AssetKey([SCHEMA, FACEBOOK.name])
Row = FacebookRow


@pytest.fixture
def facebook_table(clean_marketing, warehouse: PostgresResource) -> None:
    with warehouse.connection() as conn:
        ensure_tables(conn)


def good_chunks() -> list[list[Row]]:
    return [[("1", D1, f"a{c}{i}", 100 + i, 5, f"1.{i}5") for i in range(3)] + [("2", D2, f"b{c}", 50, 2, "0.333333")]
            for c in range(3)]


def totals_of(chunks: list[list[Row]]) -> dict:
    reported: dict = {}
    for chunk in chunks:
        for account, day, _, impressions, clicks, spend in chunk:
            got = reported.setdefault((account, day), {"impressions": 0, "clicks": 0, "spend": Decimal(0)})
            got["impressions"] += impressions
            got["clicks"] += clicks
            got["spend"] += Decimal(spend)
    return reported


def publish(warehouse: PostgresResource, chunks: list[list[Row]], reported: dict, *, stream: bool = True,
            after_staging=None) -> tuple[list[dg.AssetCheckResult], BaseException | None, StagingWriter]:
    """``chunks`` published with the Facebook audits, streamed or not (support.publish_facebook)."""
    return publish_facebook(warehouse, chunks, FACEBOOK_AUDITS, reported=reported, stream=stream,
                            after_staging=after_staging)


def published(pg) -> int:
    return pg.execute(f"SELECT count(*) FROM {SCHEMA}.{FACEBOOK.name}").fetchone()[0]


def test_a_clean_streamed_load_is_reconciled_over_every_chunk_and_published(facebook_table, warehouse, pg) -> None:
    chunks = good_chunks()
    checks, error, staging = publish(warehouse, chunks, totals_of(chunks))
    assert error is None and all(c.passed for c in checks), [(c.check_name, c.description) for c in checks]
    assert {c.check_name: c.metadata.get("groups") for c in checks if c.check_name.startswith("totals")} == {
        "totals_match_api": dg.IntMetadataValue(2), "totals_within_tolerance": dg.IntMetadataValue(2)}
    # the verdicts came from the folds, not from scans of the staging table
    assert all(staging.folded(a) is not None for a in FACEBOOK_AUDITS if isinstance(a, FoldedAudit) and a.judge)
    assert published(pg) == 12


BAD = {  # what is wrong with one row -> the blocking audit that must stop the publish
    "negative spend": ("metrics_not_negative", lambda r: (*r[:5], "-0.50")),
    "negative impressions": ("metrics_not_negative", lambda r: (*r[:3], -1, *r[4:])),
    "null key": ("keys_not_null", lambda r: (r[0], r[1], None, *r[3:])),
    "totals off": ("totals_within_tolerance", lambda r: (*r[:3], r[3] + 1000, *r[4:])),
}


@pytest.mark.parametrize("where", [0, -1], ids=["first chunk", "last chunk"])
@pytest.mark.parametrize("bad", list(BAD))
def test_a_bad_row_in_the_first_or_the_last_chunk_blocks_the_streamed_publish(facebook_table, warehouse, pg, bad,
                                                                             where) -> None:
    chunks = good_chunks()
    reported = totals_of(chunks)  # the API's totals: those of the good rows
    audit, spoil = BAD[bad]
    chunks[where][1] = spoil(chunks[where][1])
    checks, error, staging = publish(warehouse, chunks, reported)
    assert error is not None and audit in str(error)
    # the verdict came from the folds (a fold giving up would fall back to a scan with the same words)
    assert all(staging.folded(a) is not None for a in FACEBOOK_AUDITS if isinstance(a, FoldedAudit) and a.judge)
    [check] = [c for c in checks if c.check_name == audit]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert published(pg) == 0  # every chunk merged before the verdict is rolled back


def test_streamed_verdicts_say_word_for_word_what_the_scans_of_the_staging_table_say(facebook_table, warehouse,
                                                                                    pg) -> None:
    chunks = good_chunks()
    chunks[0][0] = ("1", D1, "a00", -7, 5, "1.05")  # negative impressions (first chunk), clicks above by 12
    chunks[0][1] = ("1", D1, "a01", 3, 9, "1.15")  # clicks above impressions by 6
    chunks[2][2] = ("1", D1, "a22", 100, 190, "-0.0000004")  # clicks above by 90; spend rounds to 0: not negative
    chunks[2][3] = ("2", D2, None, 50, 2, "-1.25")  # a null key and a negative spend, last chunk
    reported = totals_of(chunks)
    reported[("2", D2)]["spend"] += Decimal("0.5")  # within the tolerance (1 unit): a WARN only
    streamed, streamed_error, staging = publish(warehouse, chunks, reported)
    scanned, scanned_error, _ = publish(warehouse, chunks, reported, stream=False)
    assert all(staging.folded(a) is not None for a in FACEBOOK_AUDITS if isinstance(a, FoldedAudit) and a.judge)

    assert said(streamed) == said(scanned)
    assert str(streamed_error) == str(scanned_error)
    verdicts = {c.check_name: c for c in streamed}
    assert verdicts["metrics_not_negative"].metadata["violations"] == dg.IntMetadataValue(2)
    assert [r["clicks"] for r in verdicts["clicks_not_above_impressions"].metadata["rows"].value] == ["190", "5", "9"]
    assert not verdicts["totals_match_api"].passed and verdicts["totals_within_tolerance"].passed
    assert published(pg) == 0


def test_streamed_verdicts_are_ready_when_the_last_chunk_is_staged(facebook_table, warehouse, pg) -> None:
    """The staged rows are audited as they are staged: emptying the staging table after the last chunk
    does not change the verdict (a scan after the last page would find nothing wrong)."""
    chunks = good_chunks()
    chunks[1][0] = ("1", D1, "a10", -5, 5, "1.05")

    def empty(staging: sql.Identifier) -> None:
        pg.execute(sql.SQL("TRUNCATE {}").format(staging))

    checks, error, _ = publish(warehouse, chunks, totals_of(chunks), after_staging=empty)
    assert error is not None and "metrics_not_negative" in str(error)
    [check] = [c for c in checks if c.check_name == "metrics_not_negative"]
    assert check.metadata["violations"] == dg.IntMetadataValue(1)
    assert check.metadata["examples"].value == [["1", "a10", "2024-03-01"]]
