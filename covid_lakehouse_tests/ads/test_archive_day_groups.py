"""The archive's write step copies one group of planned days at a time (the shown date is planned in
ads.archive_pending): the archive holds exactly the planned rows, every data file one UTC day, also
for rows at midnight, for a batch planned before the shown date was, and after a failure mid-copy."""

from datetime import UTC, date, datetime, timedelta

import pyarrow.parquet as pq
import pytest

from covid_lakehouse.defs.ads.archive import ARCHIVE_NAMESPACE, ARCHIVE_TABLE, archive_old_rows
from covid_lakehouse.defs.ads.warehouse import ensure_tables
from covid_lakehouse_tests.ads.support import NOW, archived_rows, assert_invariant, live_ids

pytestmark = pytest.mark.integration

RETENTION = timedelta(hours=12)
CHUNK = 7
# Rows per UTC day, before NOW: days larger than a chunk (copied alone, in several chunks) and small
# ones (grouped with their neighbours into one copy); rows on both sides of each midnight.
DAY_ROWS = {date(2024, 4, 26): 3, date(2024, 4, 27): 16, date(2024, 4, 28): 2, date(2024, 4, 29): 1,
            date(2024, 4, 30): 9, date(2024, 5, 1): 4}


@pytest.fixture
def shown(ads_clean, warehouse, pg) -> dict[str, date]:
    """ads.ads with DAY_ROWS rows a day, inserted in a non-UTC session; {ad_id: UTC shown date}.
    The first and last rows of each day are at 00:00:00 and 23:59:59.999999 UTC."""
    with warehouse.connection() as conn:
        ensure_tables(conn)
    pg.execute("SET TIME ZONE 'America/Los_Angeles'")
    expected = {}
    for day, count in DAY_ROWS.items():
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
        times = [midnight + (timedelta(days=1) - timedelta(microseconds=1)) * i / max(count - 1, 1)
                 for i in range(count)]
        for at in times:
            ad_id = pg.execute(
                "INSERT INTO ads.ads SELECT gen_random_uuid(), 'brand', NULL, '__unknown', NULL, NULL, %s, "
                "'backup/test.json', now(), nextval('ads.ads_row_version') RETURNING ad_id::text", (at,)).fetchone()[0]
            expected[ad_id] = day
    pg.execute("RESET TIME ZONE")
    return expected


def _assert_archived_by_day(lakehouse, expected: dict[str, date]) -> None:
    table = lakehouse.load_table(ARCHIVE_NAMESPACE, ARCHIVE_TABLE)
    rows = table.scan(selected_fields=("ad_id", "shown_at", "shown_date")).to_arrow()
    got = dict(zip(rows["ad_id"].to_pylist(), rows["shown_date"].to_pylist(), strict=True))
    assert rows.num_rows == len(expected) and got == expected
    assert all(at.astimezone(UTC).date() == day for at, day in zip(
        rows["shown_at"].to_pylist(), rows["shown_date"].to_pylist(), strict=True))
    for task in table.scan().plan_files():  # one partition per file, holding only that day's rows
        days = set(pq.read_table(table.io.new_input(task.file.file_path).open(), columns=["shown_date"])
                   ["shown_date"].to_pylist())
        assert days == {date(1970, 1, 1) + timedelta(days=task.file.partition[0])}  # Iceberg: days since epoch


def test_the_plan_records_utc_shown_dates_and_each_file_holds_one_day(shown, warehouse, lakehouse, pg):
    planned, indexed, chunks = {}, [], []

    def read_plan(step: str) -> None:
        chunks.append(step == "chunk_written")
        if step == "planned":
            planned.update(pg.execute("SELECT ad_id::text, shown_date FROM ads.archive_pending").fetchall())
            indexed.extend(pg.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = 'ads' "
                                      "AND tablename = 'archive_pending'").fetchall())

    [report] = archive_old_rows(warehouse, lakehouse, retention=RETENTION, now=NOW, chunk_rows=CHUNK, hook=read_plan)

    assert planned == shown
    assert len(indexed) == 1 and indexed[0][0].endswith("(shown_date)")  # the copy's groups are read through it
    # one copy per group of days, chunked on its own: [04-26], [04-27] (16 rows: 3 chunks), [04-28..29],
    # [04-30] (2 chunks), [05-01]; one copy of the whole batch would have made 5 chunks of 7
    assert sum(chunks) == 8
    assert report.archived_rows == report.deleted_rows == len(shown)
    _assert_archived_by_day(lakehouse, shown)
    assert live_ids(pg) == set()


def test_a_batch_planned_without_shown_dates_is_resumed_completely(shown, warehouse, lakehouse, pg):
    """A batch planned by the previous version (no shown_date in ads.archive_pending) is finished."""
    def stop(step: str) -> None:
        if step == "planned":
            raise RuntimeError("stopped after the plan")

    with pytest.raises(RuntimeError, match="stopped after the plan"):
        archive_old_rows(warehouse, lakehouse, retention=RETENTION, now=NOW, chunk_rows=CHUNK, hook=stop)
    pg.execute("UPDATE ads.archive_pending SET shown_date = NULL")

    [report] = archive_old_rows(warehouse, lakehouse, retention=RETENTION, now=NOW, chunk_rows=CHUNK)

    assert report.resumed and report.archived_rows == report.deleted_rows == len(shown)
    _assert_archived_by_day(lakehouse, shown)
    assert pg.execute("SELECT count(*) FROM ads.archive_pending").fetchone()[0] == 0


def test_a_failure_between_day_groups_deletes_nothing_and_the_rerun_archives_each_row_once(
        shown, warehouse, lakehouse, pg):
    written = []

    def fail_in_third_chunk(step: str) -> None:
        if step == "chunk_written":
            written.append(step)
            if len(written) == 3:
                raise RuntimeError("failed mid-copy")

    with pytest.raises(RuntimeError, match="failed mid-copy"):
        archive_old_rows(warehouse, lakehouse, retention=RETENTION, now=NOW, chunk_rows=CHUNK,
                         hook=fail_in_third_chunk)
    assert live_ids(pg) == set(shown) and archived_rows(lakehouse) == []

    [report] = archive_old_rows(warehouse, lakehouse, retention=RETENTION, now=NOW, chunk_rows=CHUNK)

    assert report.resumed and report.archived_rows == len(shown)
    assert assert_invariant(pg, lakehouse, set(shown)) == (0, len(shown))
    _assert_archived_by_day(lakehouse, shown)
