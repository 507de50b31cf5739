"""The archive keeps every value exactly: text the API sends that a CSV reader likes to take for NULL
(NA, N/A, null, ...), empty strings, quotes, newlines and non-ASCII read back from ads.ads_archive as
PostgreSQL held them (real PostgreSQL, S3 and Iceberg catalog)."""

from datetime import timedelta

import pytest

from covid_lakehouse.defs.ads.archive import ARCHIVE_NAMESPACE, ARCHIVE_TABLE, archive_old_rows
from covid_lakehouse_dev.apis.ads import AdsMock
from covid_lakehouse_tests.ads.support import NOW, assert_invariant, load_rows

pytestmark = pytest.mark.integration

RETENTION = timedelta(hours=12)
# (ad_campaign_raw: NOT NULL, ad_scheme_origin: nullable) for the first old ads
ODD = [("NA", "NA"), ("null", "N/A"), ("NULL", "nan"), ("N/A", ""), ("nan", None), ("", "NULL"),
       ('say "hi", twice', "line\nbreak"), ("Ñew Yörk — 東京", "#N/A")]
COLUMNS = ("ad_id", "ad_group", "ad_campaign", "ad_campaign_raw", "ad_scheme_origin", "ad_scheme_approved",
           "shown_at", "backup_key", "loaded_at", "row_version")


def test_archived_rows_read_back_exactly_what_postgresql_held(ads_clean, warehouse, lakehouse, pg):
    loaded = load_rows(warehouse, AdsMock(seed=11, now=NOW.timestamp), pages=2)
    old = [r[0] for r in pg.execute("SELECT ad_id FROM ads.ads WHERE shown_at < %s ORDER BY ad_id",
                                    (NOW - RETENTION,))]
    assert len(old) > len(ODD)
    for ad_id, (raw, origin) in zip(old, ODD, strict=False):
        pg.execute("UPDATE ads.ads SET ad_campaign_raw = %s, ad_scheme_origin = %s WHERE ad_id = %s",
                   (raw, origin, ad_id))
    held = {str(r[0]): (str(r[0]), *r[1:]) for r in pg.execute(
        f"SELECT {', '.join(COLUMNS)} FROM ads.ads WHERE shown_at < %s", (NOW - RETENTION,))}

    [report] = archive_old_rows(warehouse, lakehouse, retention=RETENTION, now=NOW, chunk_rows=7)

    assert report.archived_rows == report.deleted_rows == len(held)
    assert pg.execute("SELECT status FROM ads.archive_batches").fetchone()[0] == "done"
    archived = lakehouse.load_table(ARCHIVE_NAMESPACE, ARCHIVE_TABLE).scan(selected_fields=COLUMNS).to_arrow()
    read = {row["ad_id"]: tuple(row[c] for c in COLUMNS) for row in archived.to_pylist()}
    assert read == held
    assert {read[str(a)][3:5] for a in old[:len(ODD)]} == set(ODD)
    assert_invariant(pg, lakehouse, loaded)
