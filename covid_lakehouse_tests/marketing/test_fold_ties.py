"""A failing audit's examples and its top-50 rows are chosen by a full order (the rank, then the natural key,
text by code point, NULLs last), in the fold of a streamed load and in the scan of the staging table alike:
tied rows are listed in the same order whatever order they were staged in, so the two read word for word."""

from datetime import date

import pytest

from covid_lakehouse.defs.marketing.checks import FACEBOOK_AUDITS, SAMPLE, TOP_ROWS
from covid_lakehouse.defs.marketing.tables import ensure_tables
from covid_lakehouse_tests.marketing.support import FacebookRow, publish_facebook, said

pytestmark = pytest.mark.integration

D1 = date(2024, 3, 1)
# 60 ads with clicks above impressions by the same 10 (ties past the 50 listed), mixed case (by code point
# "B.." sorts before "a.."), staged in the reverse of their key order, over three chunks; one with no ad id
ADS = [f"{'aB'[i % 2]}{i:03d}" for i in range(60)]
NEGATIVE = [f"n{i}" for i in range(SAMPLE + 2)]  # negative spend: more than the SAMPLE examples


def chunks() -> list[list[FacebookRow]]:
    tied: list[FacebookRow] = [("1", D1, ad, 10, 20, "1.5") for ad in sorted(ADS, reverse=True)]
    tied.insert(5, ("1", D1, None, 10, 20, "1.5"))
    negative: list[FacebookRow] = [("1", D1, ad, 10, 1, "-1.5") for ad in sorted(NEGATIVE, reverse=True)]
    rows = negative[:4] + tied + negative[4:]
    return [rows[:25], rows[25:50], rows[50:]]


def test_tied_rows_are_listed_in_key_order_folded_and_scanned(clean_marketing, warehouse) -> None:
    with warehouse.connection() as conn:
        ensure_tables(conn)
    streamed, streamed_error, _ = publish_facebook(warehouse, chunks(), FACEBOOK_AUDITS)
    scanned, scanned_error, _ = publish_facebook(warehouse, chunks(), FACEBOOK_AUDITS, stream=False)
    verdicts = {c.check_name: c for c in streamed}
    listed = [r["ad_id"] for r in verdicts["clicks_not_above_impressions"].metadata["rows"].value]
    assert listed == sorted(ADS)[:TOP_ROWS]  # code point order: every "B.." before every "a.."; the NULL last
    examples = verdicts["metrics_not_negative"].metadata["examples"].value
    assert [ad for _, ad, _ in examples] == sorted(NEGATIVE)[:SAMPLE]
    assert said(streamed) == said(scanned)
    assert str(streamed_error) == str(scanned_error)
