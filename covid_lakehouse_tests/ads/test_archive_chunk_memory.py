"""The archive's write holds one chunk at a time: at no point while the chunks are read and written
(Arrow's peak allocation) is the previous chunk or a second, date-ordered copy of this one still held
(the write used to copy a chunk spanning several days whole into date order, and kept that copy and the
chunk alive while it read the next one)."""

from datetime import date, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from covid_lakehouse.defs.ads.archive import archive_old_rows
from covid_lakehouse.defs.ads.archive.write import split_by_day
from covid_lakehouse.defs.ads.settings import ARCHIVE_NAMESPACE, ARCHIVE_TABLE
from covid_lakehouse.defs.ads.warehouse import ensure_tables
from covid_lakehouse_tests.ads.support import NOW

DAYS = 12
ROWS_PER_DAY = 10_000
CHUNK_ROWS = 6 * ROWS_PER_DAY  # a group of six days, each chunk interleaving them (no ORDER BY)
# Rows of ~800 bytes: what the write adds per row (the batch's two columns) stays small beside the chunk
READAHEAD_BYTES = 32 * (256 << 10)  # the CSV reader's blocks read ahead of the parser, at most


@pytest.mark.integration
def test_the_write_holds_one_chunk_at_a_time(ads_clean, pg, warehouse, lakehouse, monkeypatch):
    ensure_tables(pg)
    # Days interleaved row by row, so every chunk spans six shown dates in no date order.
    pg.execute(
        "INSERT INTO ads.ads SELECT gen_random_uuid(), 'marketing', 500 + i %% 500, (500 + i %% 500)::text, "
        "'manual', i %% 2 = 0, %s::timestamptz - make_interval(days => 1 + i %% %s, secs => i %% 3600), "
        "'backup/date=2024-01-01/' || repeat(md5(i::text), 20) || '.json', %s, nextval('ads.ads_row_version') "
        "FROM generate_series(1, %s) i",
        (NOW, DAYS, NOW, DAYS * ROWS_PER_DAY))
    # Arrow's peak, not its allocation between chunks: the archive allocates from jemalloc (lib/memory.py
    # returning_memory_pool), here through a pool of its own that keeps its own high-water mark.
    pools: list[pa.MemoryPool] = []
    jemalloc = pa.jemalloc_memory_pool

    def measured_pool() -> pa.MemoryPool:
        pools.append(pa.proxy_memory_pool(jemalloc()))
        return pools[-1]

    monkeypatch.setattr(pa, "jemalloc_memory_pool", measured_pool)
    seen: dict[str, list[int]] = {"planned": [], "chunk_written": []}

    def hook(step: str) -> None:
        if not pools:  # a pyarrow built without jemalloc: the archive keeps the default pool, unmeasured
            return
        if step == "planned":
            seen[step].append(pools[-1].bytes_allocated())
        elif step == "chunk_written":  # the highest allocation since the pool was made: during the writes
            seen[step].append(pools[-1].max_memory())

    [report] = archive_old_rows(warehouse, lakehouse, retention=timedelta(hours=12), now=NOW,
                                chunk_rows=CHUNK_ROWS, hook=hook)
    assert report.archived_rows == report.deleted_rows == DAYS * ROWS_PER_DAY
    if not pools:  # depends on the pyarrow build, not on the code under test
        pytest.skip("pyarrow has no jemalloc: no pool of the archive's own to measure Arrow's peak in")
    assert len(seen["chunk_written"]) == DAYS * ROWS_PER_DAY // CHUNK_ROWS

    # One chunk as Arrow holds it (the archived columns without the two the batch adds).
    archived = lakehouse.load_table(ARCHIVE_NAMESPACE, ARCHIVE_TABLE).scan(limit=CHUNK_ROWS).to_arrow()
    chunk_bytes = archived.drop_columns(["batch_id", "archived_at"]).nbytes
    [before_write] = seen["planned"]
    peak = max(seen["chunk_written"]) - before_write
    # The chunk, one day's copy and parquet's buffers (1.45 chunks measured; and at most the reader's blocks
    # ahead). Two chunks at once (the last one still held while the next is read) measured 2.01, with a
    # date-ordered copy of each 2.9.
    assert peak <= 1.6 * chunk_bytes + READAHEAD_BYTES, (peak, chunk_bytes)


def test_a_chunk_spanning_several_days_is_split_into_each_day_in_its_order_without_a_whole_copy():
    """What the write holds as it writes a day's file: that day's rows, not a date-ordered copy of the
    whole chunk (a slice of such a copy reports the copy's buffers)."""
    first = date(2024, 1, 1)
    batches = [pa.record_batch({"shown_date": [first + timedelta(days=(b * 2_000 + i) % 6) for i in range(2_000)],
                                "ad_id": [f"ad-{b}-{i}" for i in range(2_000)]}) for b in range(30)]
    chunk = pa.Table.from_batches(batches)  # 60,000 rows in 30 pieces, the six days interleaved
    parts = list(split_by_day(chunk))
    assert [day for day, _ in parts] == [first + timedelta(days=d) for d in range(6)]
    # each day's rows in their order in the chunk: the chunk's stable sort by date
    assert pa.concat_tables([rows for _, rows in parts]).equals(chunk.take(pc.sort_indices(chunk["shown_date"])))
    for day, rows in parts:
        assert rows.num_rows == 10_000
        assert rows.get_total_buffer_size() <= 1.05 * rows.nbytes + 4096, (day, rows.get_total_buffer_size(),
                                                                            rows.nbytes)
