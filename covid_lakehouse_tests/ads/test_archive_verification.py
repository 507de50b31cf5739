"""The read-back verification blocks the delete when the committed archive does not hold exactly the
planned rows: one ad read back twice while another is missing (the counts still agree with the
snapshot's), or a row the batch never planned. Nothing leaves ads.ads then."""

from datetime import timedelta

import pytest
from pyiceberg.expressions import EqualTo

from covid_lakehouse.defs.ads.archive import (
    ARCHIVE_NAMESPACE,
    ARCHIVE_TABLE,
    ArchiveVerificationError,
    archive_old_rows,
)
from covid_lakehouse_dev.apis.ads import AdsMock
from covid_lakehouse_tests.ads.support import NOW, live_ids, load_rows

pytestmark = pytest.mark.integration

RETENTION = timedelta(hours=12)


def _tamper_after_commit(lakehouse, pg, change: str):
    def hook(step: str) -> None:
        if step != "committed":
            return
        table = lakehouse.load_table(ARCHIVE_NAMESPACE, ARCHIVE_TABLE)
        batch_id = pg.execute("SELECT batch_id::text FROM ads.archive_batches WHERE status <> 'done'").fetchone()[0]
        rows = table.scan(row_filter=EqualTo("batch_id", batch_id)).to_arrow()
        if change == "duplicate":  # ad 0 twice, ad 1 gone: as many rows as the snapshot recorded
            table.delete(EqualTo("ad_id", rows["ad_id"][1].as_py()))
            table.append(rows.slice(0, 1))
        else:  # an extra version of ad 0 that the plan never saw
            extra = rows.slice(0, 1).to_pylist()
            extra[0]["row_version"] += 10_000_000
            table.delete(EqualTo("ad_id", rows["ad_id"][1].as_py()))
            table.append(rows.from_pylist(extra, schema=rows.schema))
    return hook


@pytest.mark.parametrize("change", ["duplicate", "unplanned"])
def test_verification_blocks_the_delete_when_the_archive_does_not_hold_exactly_the_plan(
        ads_clean, warehouse, lakehouse, pg, change):
    loaded = load_rows(warehouse, AdsMock(seed=11, now=NOW.timestamp), pages=2)
    with pytest.raises(ArchiveVerificationError) as raised:
        archive_old_rows(warehouse, lakehouse, retention=RETENTION, now=NOW, chunk_rows=40,
                         hook=_tamper_after_commit(lakehouse, pg, change))
    counts = raised.value.metadata
    assert counts["read_back"].value == counts["recorded"].value
    if change == "duplicate":
        assert (counts["distinct"].value, counts["unplanned"].value) == (counts["read_back"].value - 1, 0)
    else:
        assert counts["unplanned"].value == 1
    assert live_ids(pg) == loaded  # nothing deleted
    assert pg.execute("SELECT status FROM ads.archive_batches").fetchone()[0] == "committed"
